/** The production worker's configuration, checks wording and log shape: pure functions, no server. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { buildProviders, PROVIDER_NAMES } from '../activities/providers';
import { LinuxProvider } from '../activities/providers/linux';
import { searchAttributeCommands } from '../worker/checks';
import { ConfigError, describeWorkerConfig, linuxProviderSettings, loadWorkerConfig } from '../worker/config';
import { createLogger, PinoSdkLogger, targetFields } from '../worker/logging';
import type { ExtraActivities } from '../worker/worker';

const dir = mkdtempSync(join(tmpdir(), 'stopflow-config-'));
// No developer's ~/.config/temporalio/temporal.toml may leak into these tests.
const configFile = join(dir, 'temporal.toml');
writeFileSync(configFile, '[profile.staging]\naddress = "staging.example.com:7233"\nnamespace = "stops"\n');
const base = { TEMPORAL_CONFIG_FILE: configFile };

function issuesOf(env: Record<string, string>): string[] {
  try {
    loadWorkerConfig({ ...base, ...env });
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('worker configuration', () => {
  it('has working defaults', () => {
    const config = loadWorkerConfig(base);
    expect(config).toMatchObject({
      taskQueue: 'stopflow',
      providers: ['simulated'],
      defaultProvider: 'simulated',
      simStatePath: '.stopflow/sim-cloud.json',
      pollIntervalMs: 5_000,
      detachHoldMs: 15_000,
      maxPollIntervalMs: 60_000,
      watchHeartbeatTimeoutMs: 900_000,
      // Metrics on loopback unless configured: they name instances and volumes.
      metricsAddress: '127.0.0.1:9464',
      shutdownGraceMs: 20_000,
      maxConcurrentActivities: 100,
      maxConcurrentWaits: 5_000,
      maxConcurrentForces: 100,
      maxCachedWorkflows: 100,
      maxConcurrentWorkflowTasks: 40,
      logLevel: 'info',
    });
    expect(config.temporal).toMatchObject({ address: 'localhost:7233', namespace: 'default' });
  });

  it('reads every variable, treating blank as unset', () => {
    const config = loadWorkerConfig({
      ...base,
      STOPFLOW_TASK_QUEUE: 'stops-eu',
      STOPFLOW_SIM_STATE: '/var/lib/stopflow/sim.json',
      STOPFLOW_POLL_INTERVAL: '2s',
      STOPFLOW_DETACH_HOLD: '30s',
      STOPFLOW_MAX_POLL_INTERVAL: '2m',
      STOPFLOW_WATCH_HEARTBEAT_TIMEOUT: '90s',
      STOPFLOW_METRICS_ADDRESS: 'off',
      STOPFLOW_SHUTDOWN_GRACE: '45s',
      STOPFLOW_MAX_CONCURRENT_ACTIVITIES: '500',
      STOPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS: '20',
      STOPFLOW_MAX_CONCURRENT_FORCES: '20',
      STOPFLOW_MAX_CACHED_WORKFLOWS: '0',
      STOPFLOW_LOG_LEVEL: 'DEBUG',
      STOPFLOW_IDENTITY: 'worker-a',
      STOPFLOW_DEFAULT_PROVIDER: '  ',
      TEMPORAL_ADDRESS: 'temporal.internal:7233',
      TEMPORAL_NAMESPACE: 'stops',
    });
    expect(config).toMatchObject({
      taskQueue: 'stops-eu',
      simStatePath: '/var/lib/stopflow/sim.json',
      pollIntervalMs: 2_000,
      detachHoldMs: 30_000,
      maxPollIntervalMs: 120_000,
      watchHeartbeatTimeoutMs: 90_000,
      metricsAddress: null,
      shutdownGraceMs: 45_000,
      maxConcurrentActivities: 500,
      maxConcurrentWorkflowTasks: 20,
      maxConcurrentForces: 20,
      maxCachedWorkflows: 0,
      logLevel: 'debug',
      identity: 'worker-a',
      defaultProvider: 'simulated',
    });
    expect(config.temporal).toMatchObject({ address: 'temporal.internal:7233', namespace: 'stops' });
  });

  it('configures and builds every provider by name', async () => {
    const config = loadWorkerConfig({
      ...base,
      STOPFLOW_PROVIDERS: 'aws, linux,simulated',
      STOPFLOW_DEFAULT_PROVIDER: 'linux',
      STOPFLOW_LINUX_STOP_COMMAND: 'systemctl poweroff --no-block',
      STOPFLOW_LINUX_VOLUME_DIR: dir,
    });
    expect(config).toMatchObject({
      providers: ['aws', 'linux', 'simulated'],
      defaultProvider: 'linux',
      linuxStopCommand: 'systemctl poweroff --no-block',
      linuxVolumeDir: dir,
    });
    const providers = await buildProviders(config.providers, {
      simStatePath: join(dir, 'sim.json'),
      linuxStopCommand: 'systemctl poweroff --no-block',
      linuxDevicePatterns: ['/dev/nvme[1-9]n1'],
      linuxInstanceId: 'web-1',
      linuxStateDir: join(dir, 'state'),
    });
    expect(providers.map((p) => p.name)).toEqual(['aws', 'linux', 'simulated']);
    expect(providers[1]).toBeInstanceOf(LinuxProvider);
    expect(providers[1]).toMatchObject({
      devicePatterns: ['/dev/nvme[1-9]n1'],
      instanceId: 'web-1',
      stateDir: join(dir, 'state'),
    });
    expect(describeWorkerConfig(config, { AWS_REGION: 'eu-west-1' })).toMatchObject({
      linux: { stopCommand: 'systemctl poweroff --no-block', volumeDir: dir },
      aws: { region: 'eu-west-1', endpoint: 'AWS default' },
    });
  });

  it("STOPFLOW_CALL_BUDGET sets a provider's call budget; the others keep their default", async () => {
    const config = loadWorkerConfig({
      ...base,
      STOPFLOW_PROVIDERS: 'aws,gcp,simulated,linux',
      STOPFLOW_LINUX_VOLUME_DIR: dir,
      STOPFLOW_GCP_PROJECT: 'my-project-123',
      STOPFLOW_GCP_ZONE: 'europe-west1-b',
      // Three workers sharing an account's 20 calls a second: 6 each, and 2.5 for the simulated cloud.
      STOPFLOW_CALL_BUDGET: ' aws = 6/30 , simulated=2.5',
    });
    expect(config.callBudgets).toEqual({
      aws: { callsPerSecond: 6, burst: 30 },
      simulated: { callsPerSecond: 2.5, burst: 13 },
    });
    expect(describeWorkerConfig(config, {})).toMatchObject({
      callBudget: {
        aws: '6/s, burst 30',
        gcp: "10/s, burst 50 (the provider's default)",
        simulated: '2.5/s, burst 13',
      },
    });
    const [aws, gcp, simulated] = await buildProviders(['aws', 'gcp', 'simulated'], {
      simStatePath: join(dir, 'sim.json'),
      callBudgets: config.callBudgets,
    });
    expect(aws?.budget).toEqual({ callsPerSecond: 6, burst: 30 });
    expect(gcp?.budget).toEqual({ callsPerSecond: 10, burst: 50 });
    expect(simulated?.budget).toEqual({ callsPerSecond: 2.5, burst: 13 });
    // Unset, the simulated cloud keeps none and the clouds their own.
    const defaults = await buildProviders(['aws', 'simulated'], { simStatePath: join(dir, 'sim.json') });
    expect(defaults.map((p) => p.budget)).toEqual([{ callsPerSecond: 10, burst: 50 }, undefined]);
    // And the start-up summary says so.
    const unset = loadWorkerConfig({ ...base, STOPFLOW_PROVIDERS: 'aws,simulated' });
    expect(describeWorkerConfig(unset, {}).callBudget).toEqual({
      aws: "10/s, burst 50 (the provider's default)",
      simulated: 'none',
    });
  });

  it('STOPFLOW_CALL_BUDGET refuses what it cannot keep, naming the entry', () => {
    const rule =
      'STOPFLOW_CALL_BUDGET: must be a comma-separated list of provider=CALLS_PER_SECOND/BURST, such as "aws=5/25" (calls per second from 0.1 to 10000; burst a whole number from 1 to 100000, by default five seconds of calls), each a provider in STOPFLOW_PROVIDERS other than linux, at most once';
    for (const [value, entry] of [
      ['aws=0/5', 'aws=0/5'],
      ['aws=5/0', 'aws=5/0'],
      ['aws=-1', 'aws=-1'],
      ['aws=fast', 'aws=fast'],
      ['aws=5/2.5', 'aws=5/2.5'],
      ['ec2=5/25', 'ec2=5/25'],
      ['aws=5/25,aws=6/30', 'aws=6/30'],
      ['aws=20000', 'aws=20000'],
      ['aws=5,,aws=6', ''],
      ['AWS=5', 'AWS=5'],
    ]) {
      expect(issuesOf({ STOPFLOW_PROVIDERS: 'aws', STOPFLOW_CALL_BUDGET: value as string })).toEqual([
        `${rule}; not: "${entry}"`,
      ]);
    }
    expect(issuesOf({ STOPFLOW_PROVIDERS: 'aws', STOPFLOW_CALL_BUDGET: 'gcp=5/25' })).toEqual([
      `${rule}; gcp is not in STOPFLOW_PROVIDERS (aws)`,
    ]);
    expect(
      issuesOf({ STOPFLOW_PROVIDERS: 'linux', STOPFLOW_LINUX_VOLUME_DIR: dir, STOPFLOW_CALL_BUDGET: 'linux=5' }),
    ).toEqual([`${rule}; linux calls no remote API and keeps no budget`]);
  });

  it('azure needs a subscription id; its endpoint must be https; the summary hides the secret', async () => {
    expect(issuesOf({ STOPFLOW_PROVIDERS: 'azure' })).toEqual([
      'AZURE_SUBSCRIPTION_ID: must be the Azure subscription id (a GUID) of the VMs the azure provider stops, set when azure is in STOPFLOW_PROVIDERS',
    ]);
    expect(
      issuesOf({
        STOPFLOW_PROVIDERS: 'azure',
        AZURE_SUBSCRIPTION_ID: 'prod',
        STOPFLOW_AZURE_ENDPOINT: 'http://arm.local',
      }),
    ).toEqual([
      expect.stringMatching(/^STOPFLOW_AZURE_ENDPOINT: must be the https URL of Azure Resource Manager/),
      expect.stringMatching(/^AZURE_SUBSCRIPTION_ID: must be the Azure subscription id \(a GUID\)/),
    ]);
    // Not configured: another tool's AZURE_SUBSCRIPTION_ID is none of the worker's business.
    expect(() =>
      loadWorkerConfig({ ...base, STOPFLOW_PROVIDERS: 'simulated', AZURE_SUBSCRIPTION_ID: 'whatever' }),
    ).not.toThrow();
    const env = {
      STOPFLOW_PROVIDERS: 'azure',
      AZURE_SUBSCRIPTION_ID: '00000000-1111-2222-3333-444444444444',
      AZURE_CLIENT_ID: 'app-1',
      AZURE_CLIENT_SECRET: 'azure-secret-7777',
    };
    const config = loadWorkerConfig({ ...base, ...env });
    const summary = describeWorkerConfig(config, env);
    expect(summary).toMatchObject({
      azure: {
        subscription: env.AZURE_SUBSCRIPTION_ID,
        endpoint: 'https://management.azure.com',
        credentials: 'service principal app-1 (secret hidden)',
      },
    });
    expect(JSON.stringify(summary)).not.toContain('azure-secret-7777');
    // Built from the environment, as the worker builds it.
    const saved = process.env.AZURE_SUBSCRIPTION_ID;
    process.env.AZURE_SUBSCRIPTION_ID = env.AZURE_SUBSCRIPTION_ID;
    try {
      const [azure] = await buildProviders(config.providers, { simStatePath: join(dir, 'sim.json') });
      expect(azure).toMatchObject({ name: 'azure', subscriptionId: env.AZURE_SUBSCRIPTION_ID, supportsForce: true });
    } finally {
      if (saved === undefined) delete process.env.AZURE_SUBSCRIPTION_ID;
      else process.env.AZURE_SUBSCRIPTION_ID = saved;
    }
  });

  it('gcp: project, zone, force and endpoint are checked; the summary names where credentials come from', async () => {
    expect(
      issuesOf({
        STOPFLOW_PROVIDERS: 'gcp',
        STOPFLOW_GCP_PROJECT: 'Not A Project',
        STOPFLOW_GCP_ZONE: 'US Central',
        STOPFLOW_GCP_FORCE: 'yes',
        STOPFLOW_GCP_ENDPOINT: 'http://compute.example.com',
      }),
    ).toEqual([
      expect.stringMatching(/^STOPFLOW_GCP_PROJECT: must be a Google Cloud project id/),
      expect.stringMatching(/^STOPFLOW_GCP_ZONE: must be a Compute Engine zone/),
      expect.stringMatching(/^STOPFLOW_GCP_FORCE: must be "off" .* or "stop-instance"/),
      expect.stringMatching(
        /^STOPFLOW_GCP_ENDPOINT: must be the https URL .* or a plain http URL on a loopback address/,
      ),
    ]);
    const env = {
      STOPFLOW_PROVIDERS: 'gcp',
      STOPFLOW_GCP_PROJECT: 'stopflow-prod',
      STOPFLOW_GCP_ZONE: 'europe-west1-b',
      STOPFLOW_GCP_FORCE: 'stop-instance',
      GOOGLE_APPLICATION_CREDENTIALS: '/etc/stopflow/gcp-key.json',
    };
    const config = loadWorkerConfig({ ...base, ...env });
    expect(describeWorkerConfig(config, env)).toMatchObject({
      gcp: {
        project: 'stopflow-prod',
        zone: 'europe-west1-b',
        force: expect.stringMatching(/^stop-instance/),
        endpoint: 'Google default',
        credentials: 'key file /etc/stopflow/gcp-key.json (contents hidden)',
      },
    });
    // Built from the environment, as the worker builds it.
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      const [gcp] = await buildProviders(config.providers, { simStatePath: join(dir, 'sim.json') });
      expect(gcp).toMatchObject({ name: 'gcp', supportsForce: true });
      process.env.STOPFLOW_GCP_FORCE = 'off';
      const [plain] = await buildProviders(config.providers, { simStatePath: join(dir, 'sim.json') });
      expect(plain).toMatchObject({ name: 'gcp', supportsForce: false });
    } finally {
      process.env = saved;
    }
  });

  it('linux needs an allow-list: a volume directory, device patterns, or both', () => {
    expect(issuesOf({ STOPFLOW_PROVIDERS: 'simulated,linux' })).toEqual([
      'STOPFLOW_LINUX_VOLUME_DIR: must be set when linux is in STOPFLOW_PROVIDERS (a directory whose loop images are the volumes), ' +
        'or STOPFLOW_LINUX_DEVICES (comma-separated globs of the devices the linux provider may detach, such as "/dev/nvme[1-9]n1"), ' +
        'or both: without an allow-list the provider would touch any device a request names',
    ]);
    // Blank is unset, and a list of nothing allows nothing.
    expect(
      issuesOf({ STOPFLOW_PROVIDERS: 'linux', STOPFLOW_LINUX_VOLUME_DIR: ' ', STOPFLOW_LINUX_DEVICES: ' , ' }),
    ).toEqual([expect.stringMatching(/^STOPFLOW_LINUX_VOLUME_DIR: must be set .* or STOPFLOW_LINUX_DEVICES /)]);
    const config = loadWorkerConfig({
      ...base,
      STOPFLOW_PROVIDERS: 'linux',
      STOPFLOW_LINUX_DEVICES: '/dev/nvme[1-9]n1, /dev/xvd[f-z]',
    });
    expect(config).toMatchObject({
      linuxDevicePatterns: ['/dev/nvme[1-9]n1', '/dev/xvd[f-z]'],
      linuxStateDir: '/var/lib/stopflow',
    });
    expect(config.linuxVolumeDir).toBeUndefined();
    expect(describeWorkerConfig(config)).toMatchObject({
      linux: {
        devices: '/dev/nvme[1-9]n1,/dev/xvd[f-z]',
        volumeDir: 'none (no loop device is allowed by its backing file)',
        stateDir: '/var/lib/stopflow',
      },
    });
    // Without linux, nothing of it is asked for.
    expect(loadWorkerConfig(base).linuxInstanceId).toBeUndefined();
  });

  it('a linux worker serves its own host, on a task queue of its own by default', () => {
    const linux = { ...base, STOPFLOW_PROVIDERS: 'simulated,linux', STOPFLOW_LINUX_VOLUME_DIR: dir };
    const byHostName = loadWorkerConfig(linux);
    expect(byHostName).toMatchObject({
      linuxInstanceId: hostname(),
      taskQueue: `stopflow-linux-${hostname()}`,
      taskQueueSource: 'linux host default',
    });
    expect(describeWorkerConfig(byHostName)).toMatchObject({
      taskQueue: `stopflow-linux-${hostname()} (one queue per linux host: start this host's stops on it, or set STOPFLOW_TASK_QUEUE)`,
      linux: { instanceId: hostname() },
    });
    const named = loadWorkerConfig({
      ...linux,
      STOPFLOW_LINUX_INSTANCE_ID: 'i-0abc.web-1',
      STOPFLOW_LINUX_STATE_DIR: '/run/stopflow',
      STOPFLOW_LINUX_DEVICES: '/dev/xvd[f-z]',
    });
    expect(named).toMatchObject({
      linuxInstanceId: 'i-0abc.web-1',
      taskQueue: 'stopflow-linux-i-0abc.web-1',
      linuxStateDir: '/run/stopflow',
    });
    // Every linux variable reaches the provider.
    expect(linuxProviderSettings(named)).toEqual({
      linuxVolumeDir: dir,
      linuxDevicePatterns: ['/dev/xvd[f-z]'],
      linuxInstanceId: 'i-0abc.web-1',
      linuxStateDir: '/run/stopflow',
    });
    // An explicit queue wins (a host that has its own queue name already).
    const explicit = loadWorkerConfig({ ...linux, STOPFLOW_TASK_QUEUE: 'stops-host-7' });
    expect(explicit).toMatchObject({ taskQueue: 'stops-host-7', taskQueueSource: 'STOPFLOW_TASK_QUEUE' });
    expect(describeWorkerConfig(explicit)).toMatchObject({ taskQueue: 'stops-host-7' });
    expect(loadWorkerConfig(base)).toMatchObject({ taskQueue: 'stopflow', taskQueueSource: 'default' });
  });

  it('ignores a Temporal config file without a default profile when no profile is asked for', () => {
    const empty = join(dir, 'empty.toml');
    writeFileSync(empty, '');
    const config = loadWorkerConfig({ TEMPORAL_CONFIG_FILE: empty, TEMPORAL_ADDRESS: 'temporal:7233' });
    expect(config.temporal).toMatchObject({ address: 'temporal:7233', namespace: 'default' });
  });

  it('uses a Temporal profile from TEMPORAL_PROFILE', () => {
    const config = loadWorkerConfig({ ...base, TEMPORAL_PROFILE: 'staging' });
    expect(config.temporal).toMatchObject({
      address: 'staging.example.com:7233',
      namespace: 'stops',
      profile: 'staging',
    });
  });

  it.each([
    ['STOPFLOW_POLL_INTERVAL', '45s', 'STOPFLOW_POLL_INTERVAL: must be a duration such as "5s" (1s-20s)'],
    ['STOPFLOW_POLL_INTERVAL', '500ms', 'STOPFLOW_POLL_INTERVAL: must be a duration such as "5s" (1s-20s)'],
    ['STOPFLOW_POLL_INTERVAL', 'fast', 'STOPFLOW_POLL_INTERVAL: must be a duration such as "5s" (1s-20s)'],
    ['STOPFLOW_DETACH_HOLD', '1h', 'STOPFLOW_DETACH_HOLD: must be a duration such as "15s" (1s-5m)'],
    [
      'STOPFLOW_WATCH_HEARTBEAT_TIMEOUT',
      '5s',
      'STOPFLOW_WATCH_HEARTBEAT_TIMEOUT: must be a duration such as "15m" (10s-30m)',
    ],
    [
      'STOPFLOW_WATCH_HEARTBEAT_TIMEOUT',
      '1h',
      'STOPFLOW_WATCH_HEARTBEAT_TIMEOUT: must be a duration such as "15m" (10s-30m)',
    ],
    ['STOPFLOW_SHUTDOWN_GRACE', '0s', 'STOPFLOW_SHUTDOWN_GRACE: must be a duration such as "20s" (1s-10m)'],
    [
      'STOPFLOW_PROVIDERS',
      'simulated,simulated',
      `STOPFLOW_PROVIDERS: must be a comma-separated list of providers from: ${PROVIDER_NAMES.join(', ')} (e.g. "simulated"), each at most once`,
    ],
    [
      'STOPFLOW_PROVIDERS',
      'openstack',
      `STOPFLOW_PROVIDERS: must be a comma-separated list of providers from: ${PROVIDER_NAMES.join(', ')} (e.g. "simulated"); unknown: openstack`,
    ],
    [
      'STOPFLOW_DEFAULT_PROVIDER',
      'openstack',
      'STOPFLOW_DEFAULT_PROVIDER: must be one of the providers in STOPFLOW_PROVIDERS (simulated)',
    ],
    [
      'STOPFLOW_METRICS_ADDRESS',
      'localhost:9464',
      'STOPFLOW_METRICS_ADDRESS: must be "off" or an IP address and port to serve Prometheus metrics on, such as "127.0.0.1:9464" (or "0.0.0.0:9464" for other hosts)',
    ],
    [
      'STOPFLOW_METRICS_ADDRESS',
      '0.0.0.0:70000',
      'STOPFLOW_METRICS_ADDRESS: must be "off" or an IP address and port to serve Prometheus metrics on, such as "127.0.0.1:9464" (or "0.0.0.0:9464" for other hosts)',
    ],
    [
      'STOPFLOW_MAX_CONCURRENT_ACTIVITIES',
      'many',
      'STOPFLOW_MAX_CONCURRENT_ACTIVITIES: must be a whole number from 1 to 10000',
    ],
    [
      'STOPFLOW_MAX_CONCURRENT_ACTIVITIES',
      '0',
      'STOPFLOW_MAX_CONCURRENT_ACTIVITIES: must be a whole number from 1 to 10000',
    ],
    [
      'STOPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS',
      '1',
      'STOPFLOW_MAX_CONCURRENT_WORKFLOW_TASKS: must be a whole number from 2 to 1000',
    ],
    ['STOPFLOW_MAX_CACHED_WORKFLOWS', '-1', 'STOPFLOW_MAX_CACHED_WORKFLOWS: must be a whole number from 0 to 100000'],
    ['STOPFLOW_LOG_LEVEL', 'verbose', 'STOPFLOW_LOG_LEVEL: must be one of trace, debug, info, warn, error'],
    ['STOPFLOW_TASK_QUEUE', 'two words', 'STOPFLOW_TASK_QUEUE: must be 1-255 characters without spaces'],
    [
      'STOPFLOW_WORKFLOW_BUNDLE',
      '/nonexistent/bundle.js',
      'STOPFLOW_WORKFLOW_BUNDLE: must be the path of an existing file (a bundle written by `stopflow worker --write-bundle <path>`)',
    ],
    [
      'TEMPORAL_ADDRESS',
      'localhost',
      'TEMPORAL_ADDRESS: must be host:port, such as "localhost:7233" or "my-namespace.a1b2c.tmprl.cloud:7233"',
    ],
    [
      'STOPFLOW_LINUX_VOLUME_DIR',
      '/nonexistent/images',
      'STOPFLOW_LINUX_VOLUME_DIR: must be the path of an existing directory (where the loop images live)',
    ],
    [
      'STOPFLOW_LINUX_DEVICES',
      '/dev/nvme1n1,sdb',
      'STOPFLOW_LINUX_DEVICES: must be a comma-separated list of globs over device paths, such as "/dev/nvme[1-9]n1,/dev/xvd[f-z]" (device pattern "sdb" must be a glob over device paths such as /dev/nvme[1-9]n1 or /dev/xvd[f-z])',
    ],
    [
      'STOPFLOW_LINUX_INSTANCE_ID',
      'web 1',
      "STOPFLOW_LINUX_INSTANCE_ID: must be this host's instance id as stop requests name it: 1-255 characters of [A-Za-z0-9._:-] (default the host name)",
    ],
    [
      'STOPFLOW_LINUX_STATE_DIR',
      'var/lib/stopflow',
      'STOPFLOW_LINUX_STATE_DIR: must be an absolute path (a directory, created when missing)',
    ],
    ['TEMPORAL_TLS', 'yes', 'TEMPORAL_TLS: must be "true" or "false"'],
    [
      'TEMPORAL_TLS_CLIENT_CERT_PATH',
      '/nonexistent/client.pem',
      'TEMPORAL_TLS_CLIENT_CERT_PATH: must be the path of an existing file',
    ],
  ])('%s=%j is rejected naming the variable and the rule', (variable, value, expected) => {
    expect(issuesOf({ [variable]: value })).toEqual([expected]);
  });

  it('checks variables against each other', () => {
    expect(issuesOf({ STOPFLOW_POLL_INTERVAL: '10s', STOPFLOW_MAX_POLL_INTERVAL: '5s' })).toEqual([
      'STOPFLOW_MAX_POLL_INTERVAL: must not be shorter than STOPFLOW_POLL_INTERVAL (10s)',
    ]);
  });

  it('names an unknown profile', () => {
    const [issue] = issuesOf({ TEMPORAL_PROFILE: 'prod' });
    expect(issue).toMatch(/^TEMPORAL_PROFILE: must name a readable Temporal configuration profile \(.*prod.*\)$/);
  });

  it('reports every problem at once, one line each', () => {
    const issues = issuesOf({
      STOPFLOW_POLL_INTERVAL: '45s',
      STOPFLOW_LOG_LEVEL: 'loud',
      STOPFLOW_MAX_CONCURRENT_ACTIVITIES: 'x',
      TEMPORAL_TLS: 'maybe',
    });
    expect(issues.map((issue) => issue.split(':')[0])).toEqual([
      'STOPFLOW_POLL_INTERVAL',
      'STOPFLOW_MAX_CONCURRENT_ACTIVITIES',
      'STOPFLOW_LOG_LEVEL',
      'TEMPORAL_TLS',
    ]);
    expect(new ConfigError(issues).message).toBe(`invalid configuration:\n${issues.map((i) => `  ${i}`).join('\n')}`);
  });

  it('prints the configuration without secrets', () => {
    const secrets = {
      TEMPORAL_API_KEY: 'tk-very-secret-api-key',
      TEMPORAL_TLS_CLIENT_CERT_DATA: '-----BEGIN CERTIFICATE-----cert-body-1234',
      TEMPORAL_TLS_CLIENT_KEY_DATA: '-----BEGIN PRIVATE KEY-----key-body-5678',
      TEMPORAL_GRPC_META_AUTHORIZATION: 'Bearer grpc-meta-secret',
      AWS_SECRET_ACCESS_KEY: 'aws-secret-9999',
      AWS_SESSION_TOKEN: 'aws-session-token-0000',
    };
    const env = {
      ...base,
      ...secrets,
      STOPFLOW_PROVIDERS: 'simulated,aws',
      TEMPORAL_ADDRESS: 'my-ns.a1b2c.tmprl.cloud:7233',
      TEMPORAL_NAMESPACE: 'my-ns.a1b2c',
      AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE',
    };
    const config = loadWorkerConfig(env);
    const printed = JSON.stringify(describeWorkerConfig(config, env));
    for (const secret of Object.values(secrets)) expect(printed).not.toContain(secret);
    expect(describeWorkerConfig(config, env)).toMatchObject({
      temporal: {
        address: 'my-ns.a1b2c.tmprl.cloud:7233',
        namespace: 'my-ns.a1b2c',
        tls: 'on',
        apiKey: 'set (hidden)',
        tlsClientCert: '(inline data, hidden)',
        tlsClientKey: '(inline data, hidden)',
        grpcMetadata: { authorization: '(hidden)' },
      },
      taskQueue: 'stopflow',
      pollInterval: '5s',
      metrics: 'http://127.0.0.1:9464/metrics',
      aws: { credentials: 'environment (AWS_ACCESS_KEY_ID, secret hidden)' },
    });
    // Errors print no secret either.
    const issues = issuesOf({ ...secrets, STOPFLOW_POLL_INTERVAL: 'soon' });
    for (const secret of Object.values(secrets)) expect(issues.join('\n')).not.toContain(secret);
  });
});

describe('extra activities', () => {
  it("one named like stopflow's must keep its signature (tsc checks this file); other names are free", () => {
    const extra: ExtraActivities = {
      askWorker: async () => ({ holders: [], completionEvents: false }),
      sweepOnce: async (limit: number) => limit,
    };
    // @ts-expect-error askWorker answers WorkerAnswers: a worker registering another shape would break every stop
    const wrongAnswer: ExtraActivities = { askWorker: async () => true };
    // @ts-expect-error requestDetach takes a VolumeTarget, not a string
    const wrongInput: ExtraActivities = { requestDetach: async (volumeId: string) => ({ volumeId }) };
    // @ts-expect-error stops started before the reconciler patch still call stopInstance and read its answer
    const wrongLegacy: ExtraActivities = { stopInstance: async () => undefined };
    expect(Object.keys({ ...extra, ...wrongAnswer, ...wrongInput, ...wrongLegacy })).toEqual([
      'askWorker',
      'sweepOnce',
      'requestDetach',
      'stopInstance',
    ]);
  });
});

describe('start-up check wording', () => {
  it('prints the exact temporal CLI commands that create missing search attributes', () => {
    const missing = [
      { name: 'StopPhase', type: 'Keyword' },
      { name: 'StopCause', type: 'Keyword' },
      { name: 'StopForced', type: 'Bool' },
    ];
    expect(searchAttributeCommands({ address: 'localhost:7233', namespace: 'stops' }, missing)).toEqual([
      'temporal operator search-attribute create --address localhost:7233 --namespace stops --name StopPhase --name StopCause --type Keyword',
      'temporal operator search-attribute create --address localhost:7233 --namespace stops --name StopForced --type Bool',
    ]);
    expect(
      searchAttributeCommands({ address: 'x:7233', namespace: 'stops', profile: 'prod' }, missing.slice(2)),
    ).toEqual([
      'temporal operator search-attribute create --profile prod --namespace stops --name StopForced --type Bool',
    ]);
    expect(
      searchAttributeCommands({ address: 'my-ns.a1b2c.tmprl.cloud:7233', namespace: 'my-ns.a1b2c' }, missing),
    ).toEqual([
      'tcld namespace search-attributes add --namespace my-ns.a1b2c --search-attribute "StopPhase=Keyword" --search-attribute "StopCause=Keyword" --search-attribute "StopForced=Bool"',
    ]);
  });
});

describe('worker logs', () => {
  function capture() {
    const lines: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line));
        callback();
      },
    });
    return { lines, logger: createLogger({ level: 'info', destination }) };
  }

  it('writes JSON lines with instanceId derived from the workflow id, without task tokens', () => {
    const { lines, logger } = capture();
    const sdk = new PinoSdkLogger(logger);
    sdk.warn('Activity failed', {
      workflowId: 'stop-i-42',
      taskToken: 'opaque',
      activityType: 'detachVolume',
      volumeId: 'vol-1',
    });
    sdk.debug('not shown at info');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'warn',
      msg: 'Activity failed',
      service: 'stopflow-worker',
      workflowId: 'stop-i-42',
      instanceId: 'i-42',
      volumeId: 'vol-1',
    });
    expect(lines[0]).not.toHaveProperty('taskToken');
    expect(typeof lines[0]?.time).toBe('string');
  });

  it('finds instanceId and volumeId in activity arguments', () => {
    expect(targetFields({ instanceId: 'i-1', volume: { volumeId: 'vol-1', device: '/dev/xvdf' } })).toEqual({
      instanceId: 'i-1',
      volumeId: 'vol-1',
    });
    expect(targetFields({ instanceId: 'i-1' })).toEqual({ instanceId: 'i-1' });
    expect(targetFields(undefined)).toEqual({});
  });
});
