// Every role assignment, each named guid(scope, principal, role) and scoped to the one resource
// that needs it (blob roles: the one container). Role definition ids and their published actions:
// tests/fixtures/azure/ (with sources); tests/infra/test_infra_permissions.py checks every request.
param storageAccountName string
@description('Container of the raw uploads (the app only reads them).')
param chatDataContainer string
@description('Container of the prepared datasets (the app writes them, the workspace reads them).')
param preparedContainer string
@description('Container of the deployment package (the Flex platform writes and reads it with the app identity).')
param deploymentContainer string
@description('The Functions host\'s container of locks, timer state and blob receipts.')
param webjobsHostsContainer string
@description('The Functions host\'s container of keys.')
param webjobsSecretsContainer string
param workspaceName string
@description('The workspace\'s own storage account (shared keys off: reached by identity).')
param workspaceStorageName string
param applicationInsightsName string
@description('Principal id of the app\'s user-assigned identity.')
param appPrincipalId string
@description('Principal id of the workspace\'s system-assigned identity.')
param workspacePrincipalId string

var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var azureMLDataScientist = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
var monitoringReader = '43d0d8ad-25c7-4714-9337-8ba259a9fe05'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource chatData 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: chatDataContainer
}

resource prepared 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: preparedContainer
}

resource deployment 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: deploymentContainer
}

resource webjobsHosts 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: webjobsHostsContainer
}

resource webjobsSecrets 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: webjobsSecretsContainer
}

resource workspaceStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: workspaceStorageName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' existing = {
  name: workspaceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// App identity: writes the prepared datasets (and the evaluation's files).
resource appPreparedOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(prepared.id, appPrincipalId, storageBlobDataOwner)
  scope: prepared
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity: the host's locks, timer state and Event Grid blob trigger receipts.
resource appHostsOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(webjobsHosts.id, appPrincipalId, storageBlobDataOwner)
  scope: webjobsHosts
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity: the host's function and system keys.
resource appSecretsOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(webjobsSecrets.id, appPrincipalId, storageBlobDataOwner)
  scope: webjobsSecrets
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity: the Flex deployment package (written on deploy, read at start).
resource appDeploymentOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deployment.id, appPrincipalId, storageBlobDataOwner)
  scope: deployment
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity: reads the raw uploads (never modifies them).
resource appChatDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(chatData.id, appPrincipalId, storageBlobDataReader)
  scope: chatData
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Blob trigger poison queue, host queues and the app's queues.
resource appQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The ledger table.
resource appTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, appPrincipalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Jobs, models, endpoints and deployments in the workspace.
resource appDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, appPrincipalId, azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', azureMLDataScientist)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Endpoint metrics (RequestsPerMinute) for the idle janitor.
resource appMonitoringReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, appPrincipalId, monitoringReader)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringReader)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The workspace reads the prepared datasets through its identity-based datastore: that container only.
resource workspaceBlobDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(prepared.id, workspacePrincipalId, storageBlobDataReader)
  scope: prepared
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: workspacePrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry with local auth off (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
resource appMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// App identity: the pipeline jobs it submits write their outputs (the trained model) to the
// workspace's default datastore with the submitter's identity now that its account has shared keys off.
resource appWorkspaceStorageContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspaceStorage.id, appPrincipalId, storageBlobDataContributor)
  scope: workspaceStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}
