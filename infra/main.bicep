// Everything the app needs in Azure, for `azd up` (Azure Developer CLI layout).
// Subscription scope: creates the resource group, then one module per concern.
// Event Grid *subscriptions* are not here: the blob-trigger webhook needs the `blobs_extension`
// system key, which exists only once the code is deployed and indexed. The post-deploy step
// (scripts/azure_postdeploy.py, an azd `postdeploy` hook) creates them.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment: seeds the resource token and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource (it must offer Flex Consumption and Azure Machine Learning).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create (empty: rg-<environment name>).')
param resourceGroupName string = ''

@description('Foundation model of the azureml registry to fine-tune (its spec must list chat-completion fine-tuning and the instance types below; the cookbook\'s Phi-3-mini-4k-instruct is retired).')
param foundationModelName string = 'Phi-4'

@description('Pinned version of the foundation model (empty: the registry\'s latest).')
param foundationModelVersion string = ''

@description('Serverless instance type of the fine-tuning jobs (from the model\'s finetune_compute_allow_list).')
param finetuneInstanceType string = 'Standard_NC24ads_A100_v4'

@description('Instance type of the online deployments (from the model\'s inference_compute_allow_list).')
param inferenceInstanceType string = 'Standard_NC24ads_A100_v4'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-${resourceToken}'
var chatDataContainer = 'chat-data'
var preparedContainer = 'prepared'
var ledgerTable = 'ledger'
var followupQueue = 'endpoint-followups'
var submissionQueue = 'collection-submissions'
var deploymentContainer = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
// The Functions host's containers, created here: its identity holds blob roles on containers only.
var webjobsHostsContainer = 'azure-webjobs-hosts'
var webjobsSecretsContainer = 'azure-webjobs-secrets'
var preparedDatastoreName = 'autopilot_prepared'
var storageSystemTopicName = 'evgt-st-${resourceToken}'
var workspaceSystemTopicName = 'evgt-mlw-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-func-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    containers: [
      chatDataContainer
      preparedContainer
      deploymentContainer
      webjobsHostsContainer
      webjobsSecretsContainer
    ]
    queues: [
      followupQueue
      submissionQueue
    ]
    tables: [
      ledgerTable
    ]
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module workspace 'modules/ml-workspace.bicep' = {
  name: 'ml-workspace'
  scope: rg
  params: {
    name: 'mlw-${resourceToken}'
    storageName: 'stml${resourceToken}'
    keyVaultName: 'kv-${resourceToken}'
    containerRegistryName: 'cr${resourceToken}'
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    location: location
    tags: tags
  }
}

module roleAssignments 'modules/role-assignments.bicep' = {
  name: 'role-assignments'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    chatDataContainer: chatDataContainer
    preparedContainer: preparedContainer
    deploymentContainer: deploymentContainer
    webjobsHostsContainer: webjobsHostsContainer
    webjobsSecretsContainer: webjobsSecretsContainer
    workspaceName: workspace.outputs.name
    workspaceStorageName: workspace.outputs.storageName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    workspacePrincipalId: workspace.outputs.principalId
  }
}

// After the role assignments: the workspace reads the container with its own identity.
module datastore 'modules/ml-datastore.bicep' = {
  name: 'ml-datastore'
  scope: rg
  dependsOn: [
    roleAssignments
  ]
  params: {
    workspaceName: workspace.outputs.name
    name: preparedDatastoreName
    storageAccountName: storage.outputs.name
    containerName: preparedContainer
  }
}

module eventGrid 'modules/event-grid.bicep' = {
  name: 'event-grid'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    workspaceName: workspace.outputs.name
    storageTopicName: storageSystemTopicName
    workspaceTopicName: workspaceSystemTopicName
    location: location
    tags: tags
  }
}

// Every app setting the code reads in Azure, and every %NAME% a binding uses: this object is the
// one source (tests/test_infra_crosscheck.py checks it against shared/settings.py and the app's
// bindings). Identity-based storage: no connection string, no FUNCTIONS_WORKER_RUNTIME (Flex
// rejects it; the runtime is functionAppConfig.runtime).
var appSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: 'https://${storage.outputs.name}.blob.${environment().suffixes.storage}'
  AzureWebJobsStorage__queueServiceUri: 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}'
  AzureWebJobsStorage__tableServiceUri: 'https://${storage.outputs.name}.table.${environment().suffixes.storage}'
  AZURE_CLIENT_ID: identity.outputs.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
  ML_BACKEND: 'azureml'
  AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
  AZURE_RESOURCE_GROUP: rg.name
  AZURE_ML_WORKSPACE: workspace.outputs.name
  AZURE_ML_DATASTORE: preparedDatastoreName
  FOUNDATION_MODEL_NAME: foundationModelName
  FOUNDATION_MODEL_VERSION: foundationModelVersion
  FINETUNE_INSTANCE_TYPE: finetuneInstanceType
  INFERENCE_INSTANCE_TYPE: inferenceInstanceType
  CHAT_DATA_CONTAINER: chatDataContainer
  PREPARED_CONTAINER: preparedContainer
  LEDGER_TABLE: ledgerTable
  RECONCILE_SCHEDULE: '0 */5 * * * *'
  JANITOR_SCHEDULE: '0 */10 * * * *'
  // HTTP streams (streamed chat completions): the worker indexes the FastAPI-typed functions at start.
  PYTHON_ENABLE_INIT_INDEXING: '1'
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    storageAccountName: storage.outputs.name
    deploymentContainer: deploymentContainer
    appSettings: appSettings
  }
}

// azd stores these in the environment (.azure/<env>/.env); the post-deploy step reads them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_BASE_URL string = functionApp.outputs.baseUrl
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_ML_WORKSPACE string = workspace.outputs.name
output AZURE_ML_DATASTORE string = preparedDatastoreName
output CHAT_DATA_CONTAINER string = chatDataContainer
output STORAGE_SYSTEM_TOPIC_NAME string = storageSystemTopicName
output WORKSPACE_SYSTEM_TOPIC_NAME string = workspaceSystemTopicName
