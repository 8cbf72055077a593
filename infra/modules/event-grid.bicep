// The Event Grid system topics on the app's storage account (BlobCreated -> the Event Grid-sourced
// blob trigger) and on the Azure ML workspace (run events -> on_job_event). Their subscriptions
// are created after the code is deployed (scripts/azure_postdeploy.py).
param storageAccountName string
param workspaceName string
param storageTopicName string
param workspaceTopicName string
param location string
param tags object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource storageTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: storageTopicName
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

resource workspaceTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: workspaceTopicName
  location: location
  tags: tags
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

output storageTopicName string = storageTopic.name
output workspaceTopicName string = workspaceTopic.name
