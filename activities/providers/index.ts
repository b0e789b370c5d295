/**
 * Builds the providers a worker is configured with, by name (docs/contract.md
 * "Providers", docs/providers.md). Each backend's module is loaded only when
 * it is configured, so a worker without `aws` never loads the AWS SDK.
 */
import type { CallBudget, Provider } from '../provider';
import { FileSimStore, SimulatedProvider } from './simulated';

/** Every provider name a worker can be configured with, in the order they are documented. */
export const PROVIDER_NAMES = ['simulated', 'linux', 'aws', 'gcp', 'azure'] as const;
export type ProviderName = (typeof PROVIDER_NAMES)[number];

export function isProviderName(name: string): name is ProviderName {
  return (PROVIDER_NAMES as readonly string[]).includes(name);
}

export interface ProviderSettings {
  /** The simulated cloud's state file, shared with `stopflow sim` (STOPFLOW_SIM_STATE). */
  simStatePath: string;
  /**
   * Call budgets chosen by the operator (STOPFLOW_CALL_BUDGET), by provider; the others keep their own default
   * (docs/worker.md "Isolation and the call budget"). linux calls no remote API and takes none.
   */
  callBudgets?: Partial<Record<ProviderName, CallBudget>>;
  /** linux: the command stopInstance runs (STOPFLOW_LINUX_STOP_COMMAND); none = stopping does nothing. */
  linuxStopCommand?: string;
  /** linux: loop devices backed by files under this directory may be touched, and are listed (STOPFLOW_LINUX_VOLUME_DIR). */
  linuxVolumeDir?: string;
  /** linux: globs over resolved device paths that may be touched, e.g. `/dev/nvme[1-9]n1` (STOPFLOW_LINUX_DEVICES). */
  linuxDevicePatterns?: readonly string[];
  /** linux: the one instance id this host is (STOPFLOW_LINUX_INSTANCE_ID, default the host name). */
  linuxInstanceId?: string;
  /** linux: where stopInstance records boot ids against a reboot (STOPFLOW_LINUX_STATE_DIR, default /var/lib/stopflow). */
  linuxStateDir?: string;
  // aws: region, endpoint and credentials come from the AWS SDK's default chain (AWS_REGION,
  // AWS_ENDPOINT_URL_EC2, AWS_PROFILE, web identity, instance or pod role).
  // gcp: project, zone, force opt-in and endpoint from the environment (STOPFLOW_GCP_PROJECT, STOPFLOW_GCP_ZONE,
  // STOPFLOW_GCP_FORCE, STOPFLOW_GCP_ENDPOINT); credentials from Application Default Credentials.
  // azure: the subscription (AZURE_SUBSCRIPTION_ID) and Resource Manager endpoint (STOPFLOW_AZURE_ENDPOINT) are read
  // from the environment like AWS's; credentials come from DefaultAzureCredential (AZURE_CLIENT_ID, managed identity, ...).
}

/** One provider per name, in the order given. */
export async function buildProviders(names: readonly ProviderName[], settings: ProviderSettings): Promise<Provider[]> {
  const providers: Provider[] = [];
  for (const name of names) providers.push(await buildProvider(name, settings));
  return providers;
}

async function buildProvider(name: ProviderName, settings: ProviderSettings): Promise<Provider> {
  const chosen = name === 'linux' ? undefined : settings.callBudgets?.[name];
  const budget = chosen ? { budget: chosen } : {};
  switch (name) {
    case 'simulated':
      return new SimulatedProvider(new FileSimStore(settings.simStatePath), {}, { name: 'simulated', ...budget });
    case 'linux': {
      const { LinuxProvider } = await import('./linux');
      return new LinuxProvider({
        ...(settings.linuxStopCommand ? { stopCommand: settings.linuxStopCommand } : {}),
        ...(settings.linuxVolumeDir ? { volumeDir: settings.linuxVolumeDir } : {}),
        ...(settings.linuxDevicePatterns ? { devicePatterns: settings.linuxDevicePatterns } : {}),
        ...(settings.linuxInstanceId ? { instanceId: settings.linuxInstanceId } : {}),
        ...(settings.linuxStateDir ? { stateDir: settings.linuxStateDir } : {}),
      });
    }
    case 'aws': {
      const { AwsProvider } = await import('./aws');
      return new AwsProvider(budget);
    }
    case 'gcp': {
      const { GcpProvider, gcpOptionsFromEnv } = await import('./gcp');
      return new GcpProvider({ ...gcpOptionsFromEnv(process.env), ...budget });
    }
    case 'azure': {
      const { AzureProvider } = await import('./azure');
      const endpoint = process.env.STOPFLOW_AZURE_ENDPOINT?.trim();
      return new AzureProvider({ ...(endpoint ? { endpoint } : {}), ...budget });
    }
  }
}
