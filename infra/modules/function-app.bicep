// The Function App on the Flex Consumption plan (FC1, Linux, Python 3.11). The deployment
// package lives in a blob container read with the app's user-assigned identity.
param name string
param planName string
param location string
param tags object
param identityId string
param storageAccountName string
param deploymentContainer string
@description('App settings (name -> value), built once in main.bicep.')
param appSettings object

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  // checkov:skip=CKV_AZURE_225: zone redundancy is not offered in every Flex Consumption region and needs always-ready instances (idle cost); Event Grid retries deliveries for 24 h through an outage
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  // checkov:skip=CKV_AZURE_222: the app must be public: Event Grid delivers to its webhooks and client apps call /api/score (function keys)
  // checkov:skip=CKV_AZURE_17: neither Event Grid webhooks nor the scoring clients present client certificates; routes are FUNCTION-level (keys)
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales per event from zero; a minimum instance count is always-ready billing
  // checkov:skip=CKV_AZURE_213: Flex Consumption has no App Service health check; Event Grid retries failed deliveries
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  // checkov:skip=CKV_AZURE_78: siteConfig.ftpsState is on Flex Consumption's rejection list; FTP is off by basicPublishingCredentialsPolicies ftp (allow false)
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // No ftpsState (nor any other property on Flex Consumption's rejection list, see
    // tests/fixtures/azure/flex-consumption-site-config.json): FTP is off through the policies below.
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Basic (user name and password) publishing off for both endpoints: deployment is by identity.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// Checkov reads the checks below as if this were the site's `web` config; this is its `appsettings`
// config, which has none of those properties (at most 4 comment lines in a row: checkov's parser).
resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  // checkov:skip=CKV_AZURE_13: not the web config (App Service Authentication does not apply to Event Grid webhooks; HTTP routes use function keys)
  // checkov:skip=CKV_AZURE_63: not the web config (HTTP logging is App Service web-server logging; Functions log to Application Insights)
  // checkov:skip=CKV_AZURE_65: not the web config (detailed error pages are an App Service web-server setting)
  // checkov:skip=CKV_AZURE_66: not the web config (failed request tracing is an App Service web-server setting)
  properties: appSettings
  // checkov:skip=CKV_AZURE_80: not the web config (.NET Framework version; this is a Python app)
  // checkov:skip=CKV_AZURE_88: not the web config (Azure Files content share; Flex deploys from a blob container)
  // checkov:skip=CKV_AZURE_222: not the web config (public network access is decided on the site, see above)
}

output name string = site.name
output baseUrl string = 'https://${site.properties.defaultHostName}'
