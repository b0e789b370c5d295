/**
 * One real Temporal dev server per test run (or TEMPORAL_ADDRESS when set),
 * with the search attributes registered, and one workflow bundle shared by
 * every test worker. Torn down at the end, also when tests fail.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { freePort } from '../devserver/ports';
import { type DevServer, startDevServer } from '../devserver/server';
import { bundleStopflowWorkflows } from '../worker/worker';

declare module 'vitest' {
  export interface ProvidedContext {
    temporalAddress: string;
    temporalHttpUrl: string | undefined;
    temporalUiUrl: string | undefined;
    temporalCliPath: string | undefined;
    workflowBundlePath: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let server: DevServer | undefined;
  const started = Date.now();
  let address = process.env.TEMPORAL_ADDRESS;
  let httpUrl = process.env.TEMPORAL_HTTP_URL;
  let uiUrl: string | undefined;
  let cliPath: string | undefined;
  if (!address) {
    const [httpPort, uiPort] = await Promise.all([freePort(), freePort()]);
    server = await startDevServer({ httpPort, uiPort, allowSdkDownload: process.env.CI !== 'true' });
    address = server.address;
    httpUrl = server.httpUrl;
    uiUrl = server.uiUrl;
    cliPath = server.cliPath;
    console.log(
      `[stopflow tests] dev server ${address} (UI ${uiUrl}, HTTP ${httpUrl}) up in ${Date.now() - started}ms`,
    );
  }
  const bundle = await bundleStopflowWorkflows();
  const bundlePath = join(mkdtempSync(join(tmpdir(), 'stopflow-bundle-')), 'workflows.js');
  writeFileSync(bundlePath, bundle.code);

  project.provide('temporalAddress', address);
  project.provide('temporalHttpUrl', httpUrl);
  project.provide('temporalUiUrl', uiUrl);
  project.provide('temporalCliPath', cliPath ?? process.env.TEMPORAL_CLI_PATH);
  project.provide('workflowBundlePath', bundlePath);

  return async () => {
    await server?.stop();
  };
}
