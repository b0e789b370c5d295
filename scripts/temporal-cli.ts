/**
 * `npm run temporal-cli`: resolves (and if needed builds) the Temporal CLI and
 * prints its path. `npm test` and CI run it first so a missing binary fails in
 * seconds with a clear message, and the one-time build is visible.
 */
import { cliVersion, resolveTemporalCli, TemporalCliNotFoundError } from '../devserver/temporal-cli';

try {
  const cli = await resolveTemporalCli({ allowSdkDownload: process.env.CI !== 'true' });
  if (cli.kind === 'path') {
    console.log(`temporal CLI (${cli.source}): ${cli.path} — ${cliVersion(cli.path).split('\n')[0]}`);
  } else {
    console.log('temporal CLI: the Temporal SDK will download it when a dev server starts');
  }
} catch (err) {
  if (err instanceof TemporalCliNotFoundError) {
    console.error(err.message);
    process.exit(1);
  }
  throw err;
}
