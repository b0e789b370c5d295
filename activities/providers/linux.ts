/**
 * `linux`: real block devices on the worker's own host (DESIGN.md "Providers").
 *
 * - instance: the host the worker runs on. The instance id is the platform's
 *   name for it and is not checked against the hostname: route a host's stops
 *   to a worker on that host (its own task queue or provider name).
 * - volume: a block device, named by its kernel name (`volumeId: "loop3"`,
 *   `"sdb"`, `"nvme1n1"`, i.e. `/dev/<volumeId>`), or by `device` when given
 *   (`/dev/loop3`, `/dev/disk/by-id/...`; the volumeId is then just a label).
 *   A device that does not exist is not attached: its detach is a success.
 * - listAttachedVolumes: the bound, writable loop devices of the host (loop
 *   devices over read-only images, such as snap packages, are never listed),
 *   limited to those whose backing file is under `volumeDir` when it is set
 *   (option or STOPFLOW_LINUX_VOLUME_DIR). Other devices are only detached
 *   when a request names them.
 * - detach: unmount every mount of the device and of its partitions (found in
 *   /proc/self/mountinfo by device number), deepest first, then release a loop
 *   device (`losetup -d`). A busy mount (EBUSY: an open file, a process's
 *   working directory) is a real stuck detach: the request is remembered and
 *   the volume reads `detaching`; Linux has no control plane that keeps
 *   working on a detach, so every state check of a requested volume tries the
 *   unmount again until it succeeds.
 * - force: `umount -l` (lazy: the mount leaves the namespace at once, the
 *   filesystem lives on until its last user lets go), then `losetup -d`; the
 *   kernel releases a loop device still in use when its last user closes it
 *   (autoclear).
 * - attachment state: `detached` when nothing in the host's mount namespace
 *   mounts the device and, for a loop device, it is unbound or set to release
 *   itself (autoclear); otherwise `detaching` if a detach was requested,
 *   else `attached`.
 * - stopInstance: runs `stopCommand` when configured (argv split on spaces,
 *   quotes group; `{instanceId}` is replaced; no shell), else does nothing and
 *   logs that it did nothing.
 *
 * Safety: never unmounts the root filesystem; refuses a device whose mount is
 * covered by another device's mount on the same path (unmounting the path
 * would take the wrong one); a device with holders (device mapper, LVM, RAID
 * stacked on it) is never reported detached and cannot be forced; every
 * command runs with execFile and an argument array, device names and paths
 * are validated first.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, resolve as resolvePath } from 'node:path';
import { log } from '@temporalio/activity';
import type { VolumeRef } from '../../common/request';
import { type AttachmentState, PermanentProviderError, type Provider, TransientProviderError } from '../provider';

export interface LinuxProviderOptions {
  /** Run by stopInstance, e.g. `systemctl poweroff --no-block` or `/usr/local/bin/stop-vm {instanceId}`. */
  stopCommand?: string;
  name?: string;
  /** Only loop devices backed by files under this directory are the host's volumes. Default STOPFLOW_LINUX_VOLUME_DIR. */
  volumeDir?: string;
  /** Longest any one command (umount, losetup, the stop command) may run. Default 2 minutes. */
  commandTimeoutMs?: number;
  /** Where "nothing to do" notes go; default the activity logger (or stderr outside an activity). */
  log?: (message: string) => void;
}

/** A kernel block device name: loop3, sdb, nvme1n1p2, dm-0, md127, mmcblk0p1. */
const DEVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$/;
/** A device path: under /dev, no `..`, no spaces or shell-looking characters. */
const DEVICE_PATH = /^\/dev\/[A-Za-z0-9._:+@/-]{1,250}$/;
const LOOP_NAME = /^loop\d+$/;
const SBIN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface MountEntry {
  id: number;
  parentId: number;
  /** "major:minor" of the mounted device. */
  dev: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** What the host says about one device right now. */
interface DeviceInfo {
  /** Kernel name, e.g. loop3. */
  name: string;
  /** The kernel's sequence number for this device's current media or binding ("" when too old to have one). */
  generation: string;
  path: string;
  /** "major:minor" of the device and its partitions. */
  devs: Set<string>;
  /** Paths of the device and its partitions, for filesystems that report no real device number (btrfs). */
  sources: Set<string>;
  loop: boolean;
  bound: boolean;
  /** Devices stacked on this one (device mapper, RAID): while any exist, it is in use. */
  holders: string[];
  autoclear: boolean;
  mounts: MountEntry[];
  allMounts: MountEntry[];
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class LinuxProvider implements Provider {
  readonly name: string;
  readonly supportsForce = true;
  readonly volumeDir: string | undefined;
  private readonly stopArgv: string[] | undefined;
  private readonly commandTimeoutMs: number;
  private readonly note: (message: string) => void;
  /**
   * Devices with a detach requested and not yet seen detached: kernel name ->
   * the device's generation (diskseq, which changes whenever a loop device is
   * bound again), so a request never carries over to the next use of the name.
   */
  private readonly requested = new Map<string, string>();
  /** One operation per device at a time (the graceful wait and a force may overlap). */
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(options: LinuxProviderOptions = {}) {
    this.name = options.name ?? 'linux';
    const dir = options.volumeDir ?? process.env.STOPFLOW_LINUX_VOLUME_DIR;
    this.volumeDir = dir ? resolvePath(dir) : undefined;
    this.stopArgv = options.stopCommand?.trim() ? splitCommand(options.stopCommand) : undefined;
    this.commandTimeoutMs = options.commandTimeoutMs ?? 120_000;
    this.note = options.log ?? defaultNote;
  }

  async listAttachedVolumes(_instanceId: string): Promise<VolumeRef[]> {
    const volumeDir = this.volumeDir ? await realpath(this.volumeDir).catch(() => this.volumeDir) : undefined;
    const names = (await readdir('/sys/block')).filter((n) => LOOP_NAME.test(n));
    const volumes: VolumeRef[] = [];
    for (const name of names.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))) {
      const backing = await readSys(`/sys/block/${name}/loop/backing_file`);
      if (backing === undefined) continue; // unbound
      if ((await readSys(`/sys/block/${name}/ro`)) === '1') continue; // a read-only image (snap, squashfs)
      if (volumeDir && !backing.startsWith(`${volumeDir}/`)) continue;
      volumes.push({ volumeId: name, device: `/dev/${name}` });
    }
    return volumes;
  }

  async detachVolume(_instanceId: string, volume: VolumeRef): Promise<void> {
    const device = await this.locate(volume);
    if (!device) return;
    await this.exclusive(device.name, async () => {
      const info = await this.inspect(device.name, device.path);
      if (isDetached(info)) {
        this.requested.delete(device.name);
        return;
      }
      this.requested.set(device.name, info.generation);
      // A busy mount leaves the volume `detaching`; the state checks keep trying.
      await this.advance(info, false);
    });
  }

  async getAttachmentState(_instanceId: string, volume: VolumeRef): Promise<AttachmentState> {
    const device = await this.locate(volume);
    if (!device) return 'detached';
    return this.exclusive(device.name, async () => {
      let info = await this.inspect(device.name, device.path);
      if (isDetached(info)) {
        this.requested.delete(device.name);
        return 'detached';
      }
      if (this.requested.get(device.name) !== info.generation) return 'attached';
      // This provider is the control plane that works on a requested detach: try it again.
      await this.advance(info, false);
      info = await this.inspect(device.name, device.path);
      if (isDetached(info)) {
        this.requested.delete(device.name);
        return 'detached';
      }
      return 'detaching';
    });
  }

  async forceDetachVolume(_instanceId: string, volume: VolumeRef): Promise<void> {
    const device = await this.locate(volume);
    if (!device) return;
    await this.exclusive(device.name, async () => {
      const info = await this.inspect(device.name, device.path);
      if (isDetached(info)) return;
      this.requested.set(device.name, info.generation);
      await this.advance(info, true);
    });
  }

  async stopInstance(instanceId: string): Promise<void> {
    if (!this.stopArgv) {
      this.note(
        `linux provider "${this.name}": no stopCommand configured, so stopping ${instanceId} does nothing; every volume is detached`,
      );
      return;
    }
    const [program, ...args] = this.stopArgv.map((arg) => arg.replaceAll('{instanceId}', instanceId)) as [
      string,
      ...string[],
    ];
    const result = await this.run(program, args, { STOPFLOW_INSTANCE_ID: instanceId });
    if (result.code === 0) return;
    const detail = `stop command ${JSON.stringify(this.stopArgv.join(' '))} exited with ${result.code}: ${tail(result.stderr || result.stdout)}`;
    // 126/127: the shell conventions for "cannot execute" and "not found"; the spawn error maps to 127 too.
    if (result.code === 126 || result.code === 127) throw new PermanentProviderError(detail);
    throw new TransientProviderError(detail);
  }

  /** The worker can unmount and release loop devices: root (CAP_SYS_ADMIN), umount, losetup, mountinfo. */
  async checkUsable(): Promise<void> {
    const uid = process.getuid?.();
    if (uid !== undefined && uid !== 0) {
      throw new Error(
        `linux provider "${this.name}" needs root (CAP_SYS_ADMIN) to unmount and release loop devices; the worker runs as uid ${uid}`,
      );
    }
    await readFile('/proc/self/mountinfo', 'utf8');
    for (const tool of ['umount', 'losetup']) {
      const result = await this.run(tool, ['--version']);
      if (result.code !== 0)
        throw new Error(`linux provider "${this.name}": ${tool} is not usable: ${tail(result.stderr)}`);
    }
    if (this.volumeDir) await stat(this.volumeDir);
  }

  // --- internals ---

  /** Resolves a volume to its device; `undefined` when no such device exists (nothing is attached). */
  private async locate(volume: VolumeRef): Promise<{ name: string; path: string } | undefined> {
    let path: string;
    if (volume.device !== undefined) {
      if (!DEVICE_PATH.test(volume.device) || volume.device.split('/').includes('..')) {
        throw new PermanentProviderError(
          `linux: device ${JSON.stringify(volume.device)} of ${volume.volumeId} must be a path under /dev such as /dev/loop3`,
        );
      }
      path = volume.device;
    } else {
      if (!DEVICE_NAME.test(volume.volumeId)) {
        throw new PermanentProviderError(
          `linux: volume ${JSON.stringify(volume.volumeId)} must be a block device name such as loop3 or sdb (or give device: "/dev/...")`,
        );
      }
      path = `/dev/${volume.volumeId}`;
    }
    let real: string;
    try {
      real = await realpath(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new TransientProviderError(`linux: cannot resolve ${path}: ${(err as Error).message}`);
    }
    const info = await stat(real);
    if (!info.isBlockDevice()) throw new PermanentProviderError(`linux: ${path} is not a block device`);
    const name = basename(real);
    if (!DEVICE_NAME.test(name) || !real.startsWith('/dev/')) {
      throw new PermanentProviderError(`linux: ${path} resolves to ${real}, not a device under /dev`);
    }
    return { name, path: real };
  }

  private async inspect(name: string, path: string): Promise<DeviceInfo> {
    const devs = new Set<string>();
    const sources = new Set<string>([path]);
    const own = await readSys(`/sys/class/block/${name}/dev`);
    if (own) devs.add(own);
    const holders = await listDir(`/sys/class/block/${name}/holders`);
    for (const entry of await listDir(`/sys/class/block/${name}`)) {
      if ((await readSys(`/sys/class/block/${name}/${entry}/partition`)) === undefined) continue;
      const dev = await readSys(`/sys/class/block/${name}/${entry}/dev`);
      if (dev) devs.add(dev);
      sources.add(`/dev/${entry}`);
      holders.push(...(await listDir(`/sys/class/block/${name}/${entry}/holders`)));
    }
    const loop = LOOP_NAME.test(name);
    const generation = (await readSys(`/sys/class/block/${name}/diskseq`)) ?? '';
    const backing = loop ? await readSys(`/sys/block/${name}/loop/backing_file`) : undefined;
    const allMounts = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
    const mounts = allMounts.filter((m) => devs.has(m.dev) || sources.has(m.source));
    return {
      name,
      generation,
      path,
      devs,
      sources,
      loop,
      bound: backing !== undefined,
      holders,
      autoclear: loop && (await readSys(`/sys/block/${name}/loop/autoclear`)) === '1',
      mounts,
      allMounts,
    };
  }

  /**
   * Moves a detach forward as far as the host allows: unmount (lazily when
   * forced) every mount of the device, deepest first, then release a loop
   * device. A busy mount on the graceful path stops here, quietly: the volume
   * stays `detaching`.
   */
  private async advance(info: DeviceInfo, lazy: boolean): Promise<void> {
    const ours = new Set(info.mounts.map((m) => m.id));
    for (const mount of info.mounts) {
      if (mount.mountPoint === '/') {
        throw new PermanentProviderError(`linux: refusing to detach ${info.path}: it holds the host's root filesystem`);
      }
      const cover = info.allMounts.find(
        (m) => m.parentId === mount.id && m.mountPoint === mount.mountPoint && !ours.has(m.id),
      );
      if (cover) {
        throw new PermanentProviderError(
          `linux: ${info.path} at ${mount.mountPoint} is covered by another mount (${cover.source}, ${cover.fsType}); unmount that first`,
        );
      }
    }
    if (info.holders.length > 0) {
      const why = `${info.path} is in use by ${info.holders.map((h) => `/dev/${h}`).join(', ')} (device mapper, LVM or RAID)`;
      // Neither unmounting nor a lazy unmount frees it: someone must tear those down first.
      if (lazy) throw new PermanentProviderError(`linux: cannot force-detach: ${why}; tear that down first`);
      if (info.mounts.length === 0) return; // stays `detaching` until the holders are gone
    }
    const ordered = [...info.mounts].sort((a, b) => depth(b.mountPoint) - depth(a.mountPoint) || b.id - a.id);
    for (const mount of ordered) {
      const result = await this.run('umount', lazy ? ['-l', '--', mount.mountPoint] : ['--', mount.mountPoint]);
      if (result.code === 0) continue;
      const now = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
      if (!now.some((m) => m.id === mount.id)) continue; // gone meanwhile (a race with another unmount)
      const why = tail(result.stderr || result.stdout);
      if (/busy/i.test(why)) {
        if (lazy) throw new TransientProviderError(`linux: lazy unmount of ${mount.mountPoint} failed: ${why}`);
        return; // a real stuck detach: stays `detaching`, tried again on the next state check
      }
      if (/superuser|permission|not permitted/i.test(why)) {
        throw new PermanentProviderError(`linux: cannot unmount ${mount.mountPoint} (${info.path}): ${why}`);
      }
      throw new TransientProviderError(`linux: unmount of ${mount.mountPoint} (${info.path}) failed: ${why}`);
    }
    if (!info.loop) return;
    const after = await this.inspect(info.name, info.path);
    if (after.mounts.length > 0 || after.holders.length > 0 || !after.bound || after.autoclear) return;
    const result = await this.run('losetup', ['-d', info.path]);
    if (result.code === 0) return;
    const why = tail(result.stderr || result.stdout);
    if (/No such device|not a loop|ENXIO/i.test(why)) return; // released meanwhile
    if (/busy/i.test(why)) {
      if (lazy) throw new TransientProviderError(`linux: release of ${info.path} failed: ${why}`);
      return;
    }
    if (/permission|not permitted/i.test(why)) {
      throw new PermanentProviderError(`linux: cannot release ${info.path}: ${why}`);
    }
    throw new TransientProviderError(`linux: release of ${info.path} failed: ${why}`);
  }

  private async exclusive<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(key) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(fn);
    this.locks.set(key, next);
    try {
      return await next;
    } finally {
      if (this.locks.get(key) === next) this.locks.delete(key);
    }
  }

  private run(program: string, args: string[], extraEnv: Record<string, string> = {}): Promise<RunResult> {
    return new Promise((resolveRun) => {
      execFile(
        program,
        args,
        {
          timeout: this.commandTimeoutMs,
          killSignal: 'SIGKILL',
          maxBuffer: 1024 * 1024,
          // Messages in English for classification; sbin on PATH for umount and losetup.
          env: { ...process.env, ...extraEnv, LC_ALL: 'C', PATH: `${process.env.PATH ?? ''}:${SBIN_PATH}` },
        },
        (error, stdout, stderr) => {
          if (!error) {
            resolveRun({ code: 0, stdout, stderr });
            return;
          }
          const err = error as NodeJS.ErrnoException & { code?: number | string; killed?: boolean };
          if (err.code === 'ENOENT') {
            resolveRun({ code: 127, stdout, stderr: `${program}: command not found` });
          } else if (err.killed) {
            resolveRun({ code: 124, stdout, stderr: `${program} timed out after ${this.commandTimeoutMs}ms` });
          } else {
            resolveRun({ code: typeof err.code === 'number' ? err.code : 1, stdout, stderr: stderr || err.message });
          }
        },
      );
    });
  }
}

function isDetached(info: DeviceInfo): boolean {
  if (info.mounts.length > 0 || info.holders.length > 0) return false;
  return !info.loop || !info.bound || info.autoclear;
}

function depth(path: string): number {
  return path.split('/').length;
}

/** /proc/self/mountinfo, with the kernel's octal escapes (`\040` for a space) decoded. */
export function parseMountInfo(text: string): MountEntry[] {
  const mounts: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const separator = fields.indexOf('-', 6);
    if (separator < 0 || fields.length < separator + 3) continue;
    mounts.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      dev: fields[2] ?? '',
      mountPoint: unescapeMount(fields[4] ?? ''),
      fsType: fields[separator + 1] ?? '',
      source: unescapeMount(fields[separator + 2] ?? ''),
    });
  }
  return mounts;
}

function unescapeMount(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * Splits a command line into argv without a shell: spaces separate, single or
 * double quotes group (no escapes, no variables, no globbing).
 */
export function splitCommand(command: string): string[] {
  const argv: string[] = [];
  let current = '';
  let quote: '"' | "'" | undefined;
  let started = false;
  for (const char of command) {
    if (quote) {
      if (char === quote) quote = undefined;
      else current += char;
    } else if (char === '"' || char === "'") {
      quote = char;
      started = true;
    } else if (/\s/.test(char)) {
      if (started) argv.push(current);
      current = '';
      started = false;
    } else {
      current += char;
      started = true;
    }
  }
  if (quote) throw new Error(`stopCommand ${JSON.stringify(command)}: unbalanced ${quote}`);
  if (started) argv.push(current);
  if (argv.length === 0) throw new Error('stopCommand is empty');
  return argv;
}

async function listDir(path: string): Promise<string[]> {
  try {
    return await readdir(path);
  } catch {
    return [];
  }
}

async function readSys(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

function tail(text: string): string {
  const trimmed = text.trim();
  return trimmed.length > 500 ? `…${trimmed.slice(-500)}` : trimmed || '(no output)';
}

function defaultNote(message: string): void {
  try {
    log.info(message);
  } catch {
    process.stderr.write(`${message}\n`);
  }
}
