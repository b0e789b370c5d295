/**
 * The linux provider on real block devices: loop devices over sparse files,
 * ext4, real mounts, and real stuck detaches (a process whose working
 * directory is inside the mount, or a mount inside the mount, makes `umount`
 * fail with EBUSY; a mount in a second mount namespace keeps the device busy
 * where mountinfo cannot see it). The conformance suite, Linux specifics, and
 * stops through the workflow on the dev server. Skipped, with the reason,
 * where loop devices or root are missing; on this project's CI they must run.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PermanentProviderError, type Provider, TransientProviderError } from '../activities/provider';
import {
  isProtectedMountPoint,
  LINUX_MAX_BATCH,
  LinuxProvider,
  type LinuxProviderOptions,
  linuxTaskQueue,
  PROTECTED_MOUNT_POINTS,
  parseDevicePatterns,
  parseMountInfo,
  splitCommand,
} from '../activities/providers/linux';
import { describeProviderConformance } from './conformance/provider-conformance';
import { eventually, type Harness, startHarness } from './helpers';
import { type Holder, LoopLab, type LoopVolume, loopDevicesUnavailable } from './support/loop-devices';

const unavailable = loopDevicesUnavailable();
if (unavailable) console.warn(`[linux provider tests] skipped: ${unavailable}`);

// On this project's CI (CI=true) the real-device tests must run: a skip there is a failure, unless allowed.
if (unavailable !== undefined && process.env.CI === 'true' && !process.env.STOPFLOW_ALLOW_LOOP_SKIP) {
  test('CI runs the loop-device tests (set STOPFLOW_ALLOW_LOOP_SKIP=1 to allow skipping them)', () => {
    throw new Error(`the linux provider's loop-device tests cannot run on this CI machine: ${unavailable}`);
  });
}
const quiet = () => undefined;
const exec = promisify(execFile);
/** The instance id the tests' providers serve: each worker serves exactly its own host. */
const HOST = 'host';
/** A directory for tests that need a volumeDir but no devices (nothing is ever backed by a file in it). */
const scratch = mkdtempSync(join(tmpdir(), 'stopflow-linux-'));

/** A provider that serves HOST and may touch the lab's loop devices; boot-id records under the lab. */
function labProvider(lab: LoopLab, options: LinuxProviderOptions = {}): LinuxProvider {
  return new LinuxProvider({
    volumeDir: lab.imagesDir,
    instanceId: HOST,
    stateDir: join(lab.dir, 'state'),
    log: quiet,
    ...options,
  });
}

/** A provider with no devices to touch, for what runs without any: stop commands, validation. */
function plainProvider(options: LinuxProviderOptions = {}): LinuxProvider {
  return new LinuxProvider({
    volumeDir: scratch,
    instanceId: HOST,
    stateDir: join(scratch, 'state'),
    log: quiet,
    ...options,
  });
}

async function processGone(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  // A zombie still answers kill(0): it is gone once its state says so.
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return /^State:\s+Z/m.test(status) || status === '';
}

describe('linux provider: parsing and validation (no devices needed)', () => {
  test('mountinfo lines are parsed, octal escapes decoded', () => {
    const [mount] = parseMountInfo(
      '36 35 7:3 / /mnt/my\\040data rw,relatime shared:1 - ext4 /dev/loop3 rw\n37 35 0:5 / /proc rw - proc proc rw\n',
    );
    expect(mount).toEqual({
      id: 36,
      parentId: 35,
      dev: '7:3',
      mountPoint: '/mnt/my data',
      fsType: 'ext4',
      source: '/dev/loop3',
    });
  });

  test('stop commands split into argv without a shell', () => {
    expect(splitCommand(`systemctl  poweroff --no-block`)).toEqual(['systemctl', 'poweroff', '--no-block']);
    expect(splitCommand(`/bin/echo "two words" '{instanceId}' ''`)).toEqual([
      '/bin/echo',
      'two words',
      '{instanceId}',
      '',
    ]);
    expect(splitCommand('echo $(rm -rf /); true')).toEqual(['echo', '$(rm', '-rf', '/);', 'true']);
    expect(() => splitCommand('echo "open')).toThrow(/unbalanced/);
  });

  test('volume names and device paths are validated before anything runs', async () => {
    const provider = plainProvider();
    for (const volume of [
      { volumeId: '-rf' },
      { volumeId: 'x', device: '/dev/../etc/passwd' },
      { volumeId: 'x', device: '/etc/passwd' },
      { volumeId: 'x', device: '/dev/loop0; reboot' },
      { volumeId: 'x', device: '/dev/null' },
    ]) {
      await expect(provider.detachVolume('host', volume), JSON.stringify(volume)).rejects.toBeInstanceOf(
        PermanentProviderError,
      );
    }
    // A device that does not exist is not attached: nothing to do.
    expect(await provider.getAttachmentState('host', { volumeId: 'stopflow-no-such-device' })).toBe('detached');
    await provider.detachVolume('host', { volumeId: 'stopflow-no-such-device' });
  });

  test('stopInstance runs the configured command with the instance id, or says it did nothing', async () => {
    const notes: string[] = [];
    await plainProvider({ instanceId: 'host-1', log: (m) => notes.push(m) }).stopInstance('host-1');
    expect(notes.join('\n')).toMatch(/no stopCommand configured.*host-1/);
    await plainProvider({ instanceId: 'host-2', stopCommand: 'test {instanceId} = host-2' }).stopInstance('host-2');
    await expect(plainProvider({ stopCommand: 'false' }).stopInstance(HOST)).rejects.toBeInstanceOf(
      TransientProviderError,
    );
    await expect(
      plainProvider({ stopCommand: '/nonexistent/stopflow-stop' }).stopInstance(HOST),
    ).rejects.toBeInstanceOf(PermanentProviderError);
  });

  test('without an allow-list (no volumeDir, no devicePatterns) every call is refused', async () => {
    const provider = new LinuxProvider({ instanceId: HOST, stopCommand: 'true', log: quiet });
    const volume = { volumeId: 'loop0' };
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['listAttachedVolumes', () => provider.listAttachedVolumes(HOST)],
      ['detachVolume', () => provider.detachVolume(HOST, volume)],
      ['forceDetachVolume', () => provider.forceDetachVolume(HOST, volume)],
      ['getAttachmentState', () => provider.getAttachmentState(HOST, volume)],
      ['getAttachmentStates', () => provider.getAttachmentStates([{ instanceId: HOST, volume }])],
      ['stopInstance', () => provider.stopInstance(HOST)],
    ];
    for (const [name, call] of calls) {
      const error = await call().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error, name).toBeInstanceOf(PermanentProviderError);
      expect((error as Error).message, name).toMatch(/STOPFLOW_LINUX_VOLUME_DIR.*STOPFLOW_LINUX_DEVICES/);
    }
    await expect(provider.checkUsable()).rejects.toThrow(/no allow-list/);
  });

  test('each worker serves its own host only: calls about another instance are refused', async () => {
    const provider = plainProvider({ instanceId: 'host-a', stopCommand: 'true' });
    const volume = { volumeId: 'stopflow-no-such-device' };
    const calls = [
      () => provider.listAttachedVolumes('host-b'),
      () => provider.detachVolume('host-b', volume),
      () => provider.forceDetachVolume('host-b', volume),
      () => provider.getAttachmentState('host-b', volume),
      () => provider.getAttachmentStates([{ instanceId: 'host-b', volume }]),
      () => provider.stopInstance('host-b'),
    ];
    for (const call of calls) {
      const error = await call().then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(PermanentProviderError);
      expect((error as Error).message).toBe(
        "this worker's linux provider serves instance host-a; route stops of host-b to that host's worker",
      );
    }
    // Its own host works; by default that is the host name.
    expect(await provider.getAttachmentState('host-a', volume)).toBe('detached');
    expect(new LinuxProvider({ volumeDir: scratch }).instanceId).toBe((await import('node:os')).hostname());
    expect(linuxTaskQueue('web-1.example')).toBe('stopflow-linux-web-1.example');
  });

  test('system mount points, and every parent of one, are protected', () => {
    expect(PROTECTED_MOUNT_POINTS).toEqual(
      expect.arrayContaining(['/', '/boot', '/boot/efi', '/usr', '/var', '/etc', '/home', '/var/lib/kubelet']),
    );
    for (const path of ['/', '/boot', '/boot/efi', '/home', '/srv/', '/var', '/var/lib', '/var/lib/docker']) {
      expect(isProtectedMountPoint(path), path).toBe(true);
    }
    for (const path of ['/mnt/data', '/var/lib/postgresql', '/srv2', '/home2', '/data', '/tmp/x']) {
      expect(isProtectedMountPoint(path), path).toBe(false);
    }
  });

  test('device patterns are globs over device paths', () => {
    expect(parseDevicePatterns(' /dev/nvme[1-9]n1 , /dev/xvd[f-z] ,')).toEqual(['/dev/nvme[1-9]n1', '/dev/xvd[f-z]']);
    expect(parseDevicePatterns('')).toEqual([]);
    for (const bad of ['nvme1n1', '/etc/*', '/dev/../etc/passwd', '/dev/disk/by-id/*', '/dev/sd a']) {
      expect(() => parseDevicePatterns(bad), bad).toThrow(/glob over device paths/);
    }
  });

  test('child processes get a minimal environment: none of the worker secrets', async () => {
    const out = join(scratch, `env-${Date.now()}.txt`);
    process.env.STOPFLOW_TEST_SECRET = 'very-secret-value-123';
    process.env.AWS_SECRET_ACCESS_KEY ??= 'aws-secret-for-the-test';
    try {
      await plainProvider({ stopCommand: `sh -c "env > ${out}"` }).stopInstance(HOST);
    } finally {
      delete process.env.STOPFLOW_TEST_SECRET;
    }
    const env = await readFile(out, 'utf8');
    expect(env).not.toContain('very-secret-value-123');
    expect(env).not.toMatch(/^(AWS_|TEMPORAL_|HOME=|STOPFLOW_TEST_SECRET)/m);
    expect(env).toMatch(/^STOPFLOW_INSTANCE_ID=host$/m);
    expect(env).toMatch(/^LC_ALL=C$/m);
    expect(env).toMatch(/^PATH=.*\/usr\/sbin/m);
  });

  test('a cancelled call kills its child process and rejects with the reason', async () => {
    const pidFile = join(scratch, `pid-${Date.now()}`);
    const controller = new AbortController();
    const stopping = plainProvider({ stopCommand: `sh -c "echo $$ > ${pidFile}; exec sleep 60"` }).stopInstance(HOST, {
      signal: controller.signal,
    });
    const pid = await eventually(
      async () => Number(await readFile(pidFile, 'utf8').catch(() => '')) || undefined,
      'the stop command to start',
      20_000,
    );
    const reason = new Error('activity cancelled');
    controller.abort(reason);
    await expect(stopping).rejects.toBe(reason);
    await eventually(() => processGone(pid), `the stop command (pid ${pid}) to be killed`, 20_000);
    // An already-cancelled call starts nothing.
    await expect(plainProvider({ stopCommand: 'true' }).stopInstance(HOST, { signal: controller.signal })).rejects.toBe(
      reason,
    );
  });

  test('a failing stop command: the error says only its exit code, the command line and output go to the log', async () => {
    const notes: string[] = [];
    const provider = plainProvider({
      stopCommand: 'sh -c "echo token=hunter2-secret; exit 3" {instanceId}',
      log: (m) => notes.push(m),
    });
    const error = await provider.stopInstance(HOST).then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    expect(error).toBeInstanceOf(TransientProviderError);
    expect(error?.message).toBe('stop command exited with code 3 (output in the worker log)');
    expect(notes.join('\n')).toContain('hunter2-secret');
    expect(notes.join('\n')).toContain('sh -c echo token=hunter2-secret; exit 3 host');
    const missing = await plainProvider({ stopCommand: '/nonexistent/stop --token=abc' })
      .stopInstance(HOST)
      .then(
        () => undefined,
        (err: unknown) => err as Error,
      );
    expect(missing).toBeInstanceOf(PermanentProviderError);
    expect(missing?.message).toBe('stop command exited with code 127 (output in the worker log)');
  });

  test('stopInstance retried after the host rebooted does not run the stop command again', async () => {
    const dir = mkdtempSync(join(scratch, 'boot-'));
    const runs = join(dir, 'runs');
    let bootId = 'boot-1';
    const provider = plainProvider({
      stateDir: join(dir, 'state'),
      stopCommand: `sh -c "echo run >> ${runs}"`,
      readBootId: async () => bootId,
    });
    const count = async () => (await readFile(runs, 'utf8').catch(() => '')).split('\n').filter(Boolean).length;
    await provider.stopInstance(HOST, { idempotencyKey: 'run-1/5' });
    expect(await count()).toBe(1);
    // A retry on the same boot: the command may not have run (the worker died first), so it runs again.
    await provider.stopInstance(HOST, { idempotencyKey: 'run-1/5' });
    expect(await count()).toBe(2);
    // The host went down and came back: the retry finds another boot id and is done.
    bootId = 'boot-2';
    await provider.stopInstance(HOST, { idempotencyKey: 'run-1/5' });
    await plainProvider({
      stateDir: join(dir, 'state'),
      stopCommand: `sh -c "echo run >> ${runs}"`,
      readBootId: async () => bootId,
    }).stopInstance(HOST, { idempotencyKey: 'run-1/5' });
    expect(await count()).toBe(2);
    // Another stop (another key), and a call without a key, run as before.
    await provider.stopInstance(HOST, { idempotencyKey: 'run-2/5' });
    await provider.stopInstance(HOST);
    expect(await count()).toBe(4);
    const records = (await readdir(join(dir, 'state'))).filter((f) => f.endsWith('.json'));
    expect(records).toHaveLength(2);
    // The real boot id is what is recorded by default.
    const real = (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
    await plainProvider({ stateDir: join(dir, 'real'), stopCommand: 'true' }).stopInstance(HOST, {
      idempotencyKey: 'run-3/5',
    });
    const [record] = await readdir(join(dir, 'real'));
    expect(JSON.parse(await readFile(join(dir, 'real', record as string), 'utf8'))).toMatchObject({
      idempotencyKey: 'run-3/5',
      instanceId: HOST,
      bootId: real,
    });
  });
});

describe.skipIf(unavailable !== undefined)('linux provider on loop devices', () => {
  describeProviderConformance(
    'linux',
    async () => {
      const lab = await LoopLab.create();
      const holders: Holder[] = [];
      return {
        provider: labProvider(lab, { stopCommand: `touch ${join(lab.dir, 'stopped-{instanceId}')}` }),
        missingVolume: { volumeId: 'stopflow-no-such-device' },
        async createInstance() {
          const healthy = await lab.makeVolume();
          const stuck = await lab.makeVolume();
          // Stuck by a mount inside its mount: force (a lazy unmount) frees it at once. A process
          // holding it stays a user of the filesystem after force, so that volume never reads
          // `detached` while it runs (see "linux specifics").
          holders.push(await lab.holdBusyByMount(stuck));
          return {
            // The worker serves one host: every instance of the fixture is that host.
            instanceId: HOST,
            healthy: [{ volumeId: healthy.name }],
            // Named by its path too (the e2e test below names one by path with a label as the volumeId).
            stuck: { volumeId: stuck.name, device: stuck.device },
          };
        },
        async instanceStopped(instanceId) {
          return existsSync(join(lab.dir, `stopped-${instanceId}`));
        },
        async unstick() {
          await Promise.all(holders.splice(0).map((h) => h.release()));
        },
        async afterEach() {
          holders.length = 0;
          await lab.reset();
          await rm(join(lab.dir, `stopped-${HOST}`), { force: true });
        },
        async close() {
          await lab.cleanup();
        },
      };
    },
    { stuckForMs: 300 },
  );

  describe('linux specifics', () => {
    let lab: LoopLab;
    beforeAll(async () => {
      lab = await LoopLab.create();
    });
    afterAll(async () => {
      await lab?.cleanup();
    });

    test('every mount of the device goes (a bind mount too), then the loop device is released', async () => {
      const volume = await lab.makeVolume();
      const second = join(lab.dir, 'mnt', 'bind');
      await lab.bindMount(volume, second);
      expect(await lab.mountsOf(volume)).toHaveLength(2);
      const provider = labProvider(lab);
      await provider.detachVolume('host', { volumeId: volume.name });
      expect(await provider.getAttachmentState('host', { volumeId: volume.name })).toBe('detached');
      expect(await lab.mountsOf(volume)).toEqual([]);
      expect(lab.isBound(volume)).toBe(false);
    });

    test('a bound loop device that is not mounted is attached until released', async () => {
      const volume = await lab.makeVolume({ mount: false });
      const provider = labProvider(lab);
      expect(await provider.getAttachmentState('host', { volumeId: volume.name })).toBe('attached');
      await provider.detachVolume('host', { volumeId: volume.name });
      expect(await provider.getAttachmentState('host', { volumeId: volume.name })).toBe('detached');
      expect(lab.isBound(volume)).toBe(false);
    });

    test('a detach request does not carry over to the next binding of the same loop device', async () => {
      const provider = labProvider(lab);
      const first = await lab.makeVolume();
      await lab.holdBusy(first);
      await provider.detachVolume('host', { volumeId: first.name });
      expect(await provider.getAttachmentState('host', { volumeId: first.name })).toBe('detaching');
      // Torn down behind the provider's back, then the name is bound again for something else.
      await lab.reset();
      const next = await lab.makeVolume({ device: first.device });
      expect(next.name).toBe(first.name);
      expect(await provider.getAttachmentState('host', { volumeId: next.name })).toBe('attached');
      expect(await lab.mountsOf(next)).toHaveLength(1);
    });

    test('listing keeps to the allow-list', async () => {
      const volume = await lab.makeVolume({ mount: false });
      const ids = async (options: LinuxProviderOptions) =>
        (await labProvider(lab, options).listAttachedVolumes('host')).map((v) => v.volumeId);
      expect(await ids({})).toContain(volume.name);
      expect(await ids({ volumeDir: join(lab.dir, 'mnt') })).not.toContain(volume.name);
      expect(await ids({ volumeDir: join(lab.dir, 'mnt'), devicePatterns: [volume.device] })).toContain(volume.name);
    });

    test('a device outside the allow-list is refused for detach, force and state checks, and left alone', async () => {
      const volume = await lab.makeVolume();
      const other = join(lab.dir, 'other-images');
      await mkdir(other, { recursive: true });
      // Allowed neither by its backing file (under imagesDir, not `other`) nor by a pattern.
      const provider = labProvider(lab, { volumeDir: other, devicePatterns: ['/dev/nvme[1-9]n1'] });
      for (const target of [{ volumeId: volume.name }, { volumeId: 'data', device: volume.device }]) {
        for (const call of [
          () => provider.detachVolume(HOST, target),
          () => provider.forceDetachVolume(HOST, target),
          () => provider.getAttachmentState(HOST, target),
          () => provider.getAttachmentStates([{ instanceId: HOST, volume: target }]),
        ]) {
          const error = await call().then(
            () => undefined,
            (err: unknown) => err as Error,
          );
          expect(error).toBeInstanceOf(PermanentProviderError);
          expect(error?.message).toContain(`refusing ${volume.device}`);
          expect(error?.message).toContain(`backing file ${volume.image} is not under`);
          expect(error?.message).toMatch(/STOPFLOW_LINUX_VOLUME_DIR.*STOPFLOW_LINUX_DEVICES/);
        }
      }
      expect(await lab.mountsOf(volume)).toHaveLength(1);
      expect(lab.isBound(volume)).toBe(true);
      // A pattern matching its real path allows it, whatever it is named by.
      const allowed = labProvider(lab, { volumeDir: other, devicePatterns: ['/dev/loop[0-9]*'] });
      await allowed.detachVolume(HOST, { volumeId: 'data', device: volume.device });
      expect(await allowed.getAttachmentState(HOST, { volumeId: volume.name })).toBe('detached');
      expect(await lab.mountsOf(volume)).toEqual([]);
    });

    test('a device mounted at a system mount point is refused even when allowed', async () => {
      // /srv, in a private mount namespace of a child process: the host's /srv is never touched.
      const volume = await lab.makeVolume({ mount: false });
      const script = join(lab.dir, 'protected.mts'); // .mts: an ES module, for top-level await
      const linux = fileURLToPath(new URL('../activities/providers/linux.ts', import.meta.url));
      await writeFile(
        script,
        [
          `import { LinuxProvider } from ${JSON.stringify(linux)};`,
          `const provider = new LinuxProvider({ instanceId: 'host', devicePatterns: [${JSON.stringify(volume.device)}], log: () => undefined });`,
          `const errors = [];`,
          `for (const call of [() => provider.detachVolume('host', { volumeId: ${JSON.stringify(volume.name)} }), () => provider.forceDetachVolume('host', { volumeId: ${JSON.stringify(volume.name)} }), () => provider.getAttachmentState('host', { volumeId: ${JSON.stringify(volume.name)} })]) {`,
          `  errors.push(await call().then(() => 'no error', (err) => err.name + ': ' + err.message));`,
          `}`,
          `const mounted = (await import('node:fs')).readFileSync('/proc/self/mountinfo', 'utf8').includes(' /srv ');`,
          `console.log(JSON.stringify({ errors, mounted }));`,
        ].join('\n'),
      );
      const tsx = fileURLToPath(new URL('../node_modules/.bin/tsx', import.meta.url));
      const { stdout } = await exec(
        'unshare',
        [
          '--mount',
          '--propagation',
          'private',
          'sh',
          '-c',
          'mount -t ext4 -- "$0" /srv && exec "$1" "$2"',
          volume.device,
          tsx,
          script,
        ],
        { timeout: 60_000 },
      );
      const result = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as { errors: string[]; mounted: boolean };
      expect(result.errors).toHaveLength(3);
      for (const error of result.errors) {
        expect(error).toMatch(
          /^PermanentProviderError: linux: refusing \/dev\/loop\d+: .* is mounted at \/srv, a system mount point/,
        );
      }
      expect(result.mounted).toBe(true);
      // The host's own root device, where it is one, is refused the same way.
      const root = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8')).find(
        (m) => m.mountPoint === '/' && m.source.startsWith('/dev/'),
      );
      if (root) {
        const provider = plainProvider({ devicePatterns: [root.source] });
        await expect(provider.getAttachmentState(HOST, { volumeId: 'root', device: root.source })).rejects.toThrow(
          /is mounted at \/, a system mount point/,
        );
        await expect(provider.detachVolume(HOST, { volumeId: 'root', device: root.source })).rejects.toThrow(
          PermanentProviderError,
        );
      }
    });

    test('a mount in another mount namespace keeps the volume detaching until that namespace lets go', async () => {
      const volume = await lab.makeVolume();
      const holder = await lab.holdInOtherNamespace(volume);
      try {
        const provider = labProvider(lab);
        await provider.detachVolume(HOST, { volumeId: volume.name });
        // Gone from this namespace, and released as far as losetup can (autoclear)...
        expect(await lab.mountsOf(volume)).toEqual([]);
        expect(lab.isAutoclear(volume) || !lab.isBound(volume)).toBe(true);
        // ...but the other namespace still mounts it, writable: not detached.
        expect(await provider.getAttachmentState(HOST, { volumeId: volume.name })).toBe('detaching');
        expect(await provider.getAttachmentState(HOST, { volumeId: volume.name })).toBe('detaching');
        // A fresh provider, which never asked for a detach, says attached.
        expect(await labProvider(lab).getAttachmentState(HOST, { volumeId: volume.name })).toBe('attached');
        await holder.release();
        await eventually(
          async () => (await provider.getAttachmentState(HOST, { volumeId: volume.name })) === 'detached',
          `${volume.device} detached once the other namespace is gone`,
          20_000,
        );
        await eventually(async () => !lab.isBound(volume), `${volume.device} to be released`, 20_000);
      } finally {
        await holder.release();
      }
    });

    test('force on a busy mount is a lazy unmount: the mount goes at once, but the volume reads detaching until its last user lets go', async () => {
      const volume = await lab.makeVolume();
      const holder = await lab.holdBusy(volume);
      const provider = labProvider(lab);
      await provider.detachVolume('host', { volumeId: volume.name });
      expect(await provider.getAttachmentState('host', { volumeId: volume.name })).toBe('detaching');
      expect(await lab.mountsOf(volume)).toHaveLength(1);
      await provider.forceDetachVolume('host', { volumeId: volume.name });
      expect(await lab.mountsOf(volume)).toEqual([]);
      // The holder still has its working directory in the detached filesystem and can still write
      // to it: the kernel keeps the device (autoclear set) and the volume is not detached.
      expect(lab.isAutoclear(volume)).toBe(true);
      expect(await provider.getAttachmentState('host', { volumeId: volume.name })).toBe('detaching');
      await holder.release();
      await eventually(
        async () => (await provider.getAttachmentState('host', { volumeId: volume.name })) === 'detached',
        `${volume.device} detached once its holder let go`,
        20_000,
      );
      await eventually(async () => !lab.isBound(volume), `${volume.device} to be released`, 10_000);
    });

    test('getAttachmentStates answers a batch as per-volume checks do, reading mountinfo once', async () => {
      let reads = 0;
      const provider = labProvider(lab, {
        readMountInfo: () => {
          reads++;
          return readFile('/proc/self/mountinfo', 'utf8');
        },
      });
      expect(provider.maxBatch).toBe(LINUX_MAX_BATCH);
      // A local backend: no call budget.
      expect((provider as Provider).budget).toBeUndefined();
      const mounted = await lab.makeVolume();
      const unmounted = await lab.makeVolume({ mount: false });
      const stuck = await lab.makeVolume();
      const gone = await lab.makeVolume({ mount: false });
      const elsewhere = await lab.makeVolume();
      await lab.holdBusy(stuck);
      const elsewhereHolder = await lab.holdInOtherNamespace(elsewhere);
      try {
        await provider.detachVolume(HOST, { volumeId: stuck.name });
        await provider.detachVolume(HOST, { volumeId: gone.name });
        await provider.detachVolume(HOST, { volumeId: elsewhere.name });
        const volumes: LoopVolume[] = [mounted, unmounted, stuck, gone, elsewhere];
        const targets = [
          ...volumes.map((v) => ({ instanceId: HOST, volume: { volumeId: v.name } })),
          { instanceId: HOST, volume: { volumeId: 'stopflow-no-such-device' } },
          { instanceId: HOST, volume: { volumeId: 'again', device: mounted.device } },
        ];
        const one: string[] = [];
        for (const target of targets) one.push(await provider.getAttachmentState(target.instanceId, target.volume));
        expect(one).toEqual(['attached', 'attached', 'detaching', 'detached', 'detaching', 'detached', 'attached']);
        reads = 0;
        expect(await provider.getAttachmentStates(targets)).toEqual(one);
        expect(reads).toBe(1);
      } finally {
        await elsewhereHolder.release();
      }
    });
  });

  describe('linux provider through the workflow', () => {
    let lab: LoopLab;
    let h: Harness;
    let hostA: string;
    let hostB: string;
    beforeAll(async () => {
      lab = await LoopLab.create();
      // One host per provider: a linux worker serves only its own instance id.
      hostA = `host-${randomUUID().slice(0, 8)}`;
      hostB = `host-${randomUUID().slice(0, 8)}`;
      h = await startHarness({
        extraProviders: [
          labProvider(lab, { instanceId: hostA, stopCommand: `touch ${join(lab.dir, 'stopped-{instanceId}')}` }),
          labProvider(lab, { name: 'linux-lab', instanceId: hostB }),
        ],
      });
    });
    afterAll(async () => {
      try {
        await h?.close();
      } finally {
        await lab?.cleanup();
      }
    });

    test('maxStopDuration force-detaches the busy volume (lazy unmount); the instance stops once its last user lets go', async () => {
      const healthy = await lab.makeVolume();
      const busy = await lab.makeVolume();
      const holder = await lab.holdBusy(busy);
      const instanceId = hostA;
      await h.stopflow.stop({
        instanceId,
        provider: 'linux',
        volumes: [{ volumeId: healthy.name }, { volumeId: 'scratch', device: busy.device }],
        maxStopDuration: '3s',
      });
      // Forced: the mount is gone at once, but the holder can still write to the filesystem,
      // so the volume is not detached and the instance is not stopped yet.
      await eventually(async () => {
        const status = await h.stopflow.status(instanceId);
        return status.volumes.find((v) => v.volumeId === 'scratch')?.state === 'force_detaching';
      }, 'the busy volume to be force-detaching');
      await eventually(async () => (await lab.mountsOf(busy)).length === 0, 'the lazy unmount');
      expect((await h.stopflow.status(instanceId)).phase).not.toBe('stopped');
      expect(existsSync(join(lab.dir, `stopped-${instanceId}`))).toBe(false);
      await holder.release();
      const result = await h.stopflow.result(instanceId);
      expect(result.phase).toBe('stopped');
      expect(result.instanceStopped).toBe(true);
      expect(result.escalation?.cause).toBe('timeout');
      expect(Object.fromEntries(result.volumes.map((v) => [v.volumeId, v.state]))).toEqual({
        [healthy.name]: 'detached',
        scratch: 'force_detached',
      });
      expect(existsSync(join(lab.dir, `stopped-${instanceId}`))).toBe(true);
      expect(await lab.mountsOf(healthy)).toEqual([]);
      expect(await lab.mountsOf(busy)).toEqual([]);
      expect(lab.isBound(healthy)).toBe(false);
      await eventually(async () => !lab.isBound(busy), `${busy.device} to be released`, 10_000);
    });

    test('a busy volume stays detaching, retried, and detaches without force once its holder lets go', async () => {
      const healthy = await lab.makeVolume();
      const busy = await lab.makeVolume();
      const holder = await lab.holdBusy(busy);
      const instanceId = hostB;
      // No volumes given: the provider lists the lab's loop devices.
      await h.stopflow.stop({ instanceId, provider: 'linux-lab' });
      await eventually(async () => {
        const status = await h.stopflow.status(instanceId);
        const states = Object.fromEntries(status.volumes.map((v) => [v.volumeId, v.state]));
        return states[healthy.name] === 'detached' && states[busy.name] === 'detaching';
      }, 'the healthy volume detached and the busy one detaching');
      expect(await lab.mountsOf(busy)).toHaveLength(1);
      await holder.release();
      const result = await h.stopflow.result(instanceId);
      expect(result.phase).toBe('stopped');
      expect(result.escalation).toBeNull();
      expect(result.volumes.map((v) => v.state)).toEqual(['detached', 'detached']);
      expect(await lab.mountsOf(busy)).toEqual([]);
      expect(lab.isBound(busy)).toBe(false);
      expect(lab.isBound(healthy)).toBe(false);
    });
  });
});
