// The Azure Machine Learning workspace (public network access, system-assigned identity) with
// its own Key Vault, container registry and storage account (artifacts, workspaceblobstore; shared keys off, reached by identity).
param name string
param storageName string
param keyVaultName string
param containerRegistryName string
param applicationInsightsId string
param location string
param tags object

resource workspaceStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  // checkov:skip=CKV_AZURE_35: the workspace is public (no VNet, no private endpoints) and Azure ML serverless compute reaches its default storage over the public endpoint
  // checkov:skip=CKV_AZURE_206: LRS: workspace artifacts and logs can be re-created; lowest idle cost
  // checkov:skip=CKV_AZURE_43: the name is a parameter: 'stml' + the 13-character resource token (lower-case letters and digits), 17 characters
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  // checkov:skip=CKV_AZURE_109: the workspace is public (no VNet): Azure ML reaches its Key Vault over the public endpoint; access is by RBAC only
  // checkov:skip=CKV_AZURE_189: same as CKV_AZURE_109
  // checkov:skip=CKV_AZURE_110: `azd down --purge` must be able to purge the vault so the environment name can be reused; purge protection forbids that
  // checkov:skip=CKV_AZURE_42: soft delete is on (7 days); the check also wants purge protection, see CKV_AZURE_110
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
  }
}

// The image a no-code MLflow deployment is built into: Azure ML creates a registry lazily "until
// deployment images are created" (azure-docs concept-workspace.md), in the resource group, with the
// caller's rights; declared here instead. Admin user off: the workspace pulls by identity.
resource containerRegistry 'Microsoft.ContainerRegistry/registries@2025-04-01' = {
  name: containerRegistryName
  location: location
  tags: tags
  // checkov:skip=CKV_AZURE_139: the workspace is public (no VNet, no private endpoints): its image builds and the managed endpoints pull over the public endpoint; admin user and anonymous pull are off
  // checkov:skip=CKV_AZURE_163: vulnerability scanning is Microsoft Defender for Containers, billed per image; the only images are Azure ML's own MLflow serving builds
  // checkov:skip=CKV_AZURE_166: quarantine needs the Premium SKU; Basic keeps the idle cost lowest for one environment image
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

// 2025-06-01: systemDatastoresAuthMode, so the workspace reaches its own storage (shared keys off) by identity.
resource workspace 'Microsoft.MachineLearningServices/workspaces@2025-06-01' = {
  name: name
  location: location
  tags: tags
  kind: 'Default'
  // checkov:skip=CKV_AZURE_243: public network access is a requirement of this deployment (no VNet, Event Grid and the app reach it publicly); private endpoints are out of scope
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: name
    storageAccount: workspaceStorage.id
    keyVault: keyVault.id
    containerRegistry: containerRegistry.id
    applicationInsights: applicationInsightsId
    publicNetworkAccess: 'Enabled'
    systemDatastoresAuthMode: 'Identity'
    v1LegacyMode: false
  }
}

output name string = workspace.name
output id string = workspace.id
output principalId string = workspace.identity.principalId
output storageName string = workspaceStorage.name
