// The datastore on the app's `prepared` container: train/test are passed to the pipeline as
// azureml://datastores/<name>/paths/datasets/<id>/... No credentials: the workspace's own
// identity reads the container (Storage Blob Data Reader, see role-assignments.bicep).
param workspaceName string
param name string
param storageAccountName string
param containerName string

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource datastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  parent: workspace
  name: name
  properties: {
    datastoreType: 'AzureBlob'
    accountName: storageAccountName
    containerName: containerName
    endpoint: environment().suffixes.storage
    protocol: 'https'
    subscriptionId: subscription().subscriptionId
    resourceGroup: resourceGroup().name
    serviceDataAccessAuthIdentity: 'WorkspaceSystemAssignedIdentity'
    credentials: {
      credentialsType: 'None'
    }
  }
}

output name string = datastore.name
