/**
 * `linux`: real block devices on the worker's own host (docs/contract.md "Providers",
 * docs/providers.md "The linux provider").
 *
 * - instance: the host the worker runs on, one id per worker (`instanceId`,
 *   STOPFLOW_LINUX_INSTANCE_ID, default the host name). A call about any other
 *   instance is refused: stopping "host-b" on host-a's worker would detach
 *   host-a's volumes and power off host-a.
 * - allow-list: only what the operator allowed is ever touched (detach, force,
 *   and state checks alike): loop devices whose backing file is under
 *   `volumeDir` (STOPFLOW_LINUX_VOLUME_DIR) and devices whose resolved path
 *   matches one of `devicePatterns` (STOPFLOW_LINUX_DEVICES, globs such as
 *   `/dev/nvme[1-9]n1`). With neither, every call is refused. A device mounted
 *   at a system mount point (PROTECTED_MOUNT_POINTS) is refused even when allowed.
 * - volume: a block device, named by its kernel name (`volumeId: "loop3"`,
 *   i.e. `/dev/<volumeId>`), or by `device` when given (`/dev/loop3`,
 *   `/dev/disk/by-id/...`; the volumeId is then just a label). A device that
 *   does not exist is not attached: its detach is a success.
 * - listAttachedVolumes: the bound, writable, allowed loop devices of the host
 *   (loop devices over read-only images, such as snap packages, are never
 *   listed). Other devices are only detached when a request names them.
 * - detach: unmount every mount of the device and of its partitions (found in
 *   /proc/self/mountinfo by device number), deepest first, then release a loop
 *   device (`losetup -d`). A busy mount (EBUSY) is a real stuck detach: the
 *   request is remembered and the volume reads `detaching`; Linux has no control
 *   plane that keeps working on a detach, so every state check of a requested
 *   volume tries the unmount again until it succeeds.
 * - force: `umount -l` (lazy: the mount leaves the namespace at once, the
 *   filesystem lives on until its last user lets go), then `losetup -d`. The
 *   volume reads `detached` only once that last user is gone: until then the
 *   filesystem can still be written.
 * - attachment state: `detached` only when nothing holds the device anywhere:
 *   no mount in the worker's namespace, no holders, a loop device released (or
 *   set to release itself and not busy), and an exclusive open (O_EXCL) of the
 *   device and each partition succeeds. That open fails with EBUSY while any
 *   mount namespace (a container's) still mounts it, which mountinfo cannot show.
 *   Otherwise `detaching` if a detach was requested, else `attached`.
 * - stopInstance: runs `stopCommand` when configured (argv split on spaces,
 *   quotes group; `{instanceId}` is replaced; no shell; a minimal environment),
 *   else does nothing and logs that. With an idempotency key, the boot id is
 *   recorded first, so a retry that finds the host rebooted since does not run
 *   it again.
 *
 * Every call honours `options.signal` (child processes are killed) and every
 * command has a timeout. Commands run with execFile and an argument array,
 * device names and paths are validated first.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, mkdir, open, readdir, readFile, realpath, rename, stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve as resolvePath } from 'node:path';
import { log } from '@temporalio/activity';
import picomatch from 'picomatch';
import type { VolumeRef } from '../../common/request';
import {
  type AttachmentState,
  type CallOptions,
  type ForceAnswer,
  PermanentProviderError,
  type Provider,
  TransientProviderError,
  type VolumeOfInstance,
} from '../provider';

/**
 * Mount points the linux provider never unmounts, even for an allowed device: a
 * device (or one of its partitions) mounted at one of these, or at a parent of
 * one (`/var/lib` holds `/var/lib/docker`), is refused. Detaching any of them
 * takes the host's own system or its container runtime down with the stop.
 */
export const PROTECTED_MOUNT_POINTS: readonly string[] = [
  '/',
  '/boot',
  '/boot/efi',
  '/usr',
  '/var',
  '/etc',
  '/home',
  '/opt',
  '/srv',
  '/var/lib/docker',
  '/var/lib/containerd',
  '/var/lib/kubelet',
];

/** Where stopInstance records the boot id of a stop it is about to run (STOPFLOW_LINUX_STATE_DIR). */
export const DEFAULT_LINUX_STATE_DIR = '/var/lib/stopflow';
/** Most devices one getAttachmentStates call takes: one mountinfo read serves them all. */
export const LINUX_MAX_BATCH = 256;

export interface LinuxProviderOptions {
  /** Run by stopInstance, e.g. `systemctl poweroff --no-block` or `/usr/local/bin/stop-vm {instanceId}`. */
  stopCommand?: string;
  name?: string;
  /** Loop devices backed by files under this directory may be touched. Default STOPFLOW_LINUX_VOLUME_DIR. */
  volumeDir?: string;
  /**
   * Globs over resolved device paths that may be touched, e.g. `/dev/nvme[1-9]n1`.
   * Default STOPFLOW_LINUX_DEVICES (comma-separated).
   */
  devicePatterns?: readonly string[];
  /** The one instance this worker's host is. Default STOPFLOW_LINUX_INSTANCE_ID, else the host name. */
  instanceId?: string;
  /** Where stopInstance keeps its boot-id records. Default STOPFLOW_LINUX_STATE_DIR, else /var/lib/stopflow. */
  stateDir?: string;
  /** Longest any one command (umount, losetup, the stop command) may run. Default 2 minutes. */
  commandTimeoutMs?: number;
  /** Where notes go (what a stop command printed, "nothing to do"); default the activity logger (or stderr). */
  log?: (message: string, level?: 'info' | 'warn') => void;
  /** The current boot's id; default /proc/sys/kernel/random/boot_id. Tests simulate a reboot with it. */
  readBootId?: () => Promise<string>;
  /** The text of /proc/self/mountinfo; tests count reads with it. */
  readMountInfo?: () => Promise<string>;
}

/** A kernel block device name: loop3, sdb, nvme1n1p2, dm-0, md127, mmcblk0p1. */
const DEVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$/;
/** A device path: under /dev, no `..`, no spaces or shell-looking characters. */
const DEVICE_PATH = /^\/dev\/[A-Za-z0-9._:+@/-]{1,250}$/;
/** A glob over device paths: the device path characters plus glob syntax. */
const DEVICE_GLOB = /^\/dev\/[A-Za-z0-9._:+@/*?[\]{},!-]{1,250}$/;
const LOOP_NAME = /^loop\d+$/;
/** The instance id rule of a StopRequest (common/request.ts): an id no request can carry serves nothing. */
const INSTANCE_ID = /^[A-Za-z0-9._:-]{1,255}$/;
/** The whole PATH of every child process: the worker's own PATH is not passed on (see `run`). */
const SBIN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** How many devices of a batch are worked on at once (each may run umount and losetup). */
const BATCH_CONCURRENCY = 8;

export interface MountEntry {
  id: number;
  parentId: number;
  /** "major:minor" of the mounted device. */
  dev: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** A request's volume resolved to a device node that exists. */
interface Located {
  /** Kernel name, e.g. loop3. */
  name: string;
  /** The resolved path, e.g. /dev/loop3. */
  path: string;
  /** The path the request gave (or /dev/<volumeId>), for messages. */
  requestedAs: string;
}

/** What the host says about one device right now. */
interface DeviceInfo extends Located {
  /** The kernel's sequence number for this device's current media or binding ("" when too old to have one). */
  generation: string;
  /** "major:minor" of the device and its partitions. */
  devs: Set<string>;
  /** Paths of the device and its partitions, for filesystems that report no real device number (btrfs). */
  sources: Set<string>;
  partitions: string[];
  loop: boolean;
  /** A loop device's backing file; undefined when unbound (or not a loop device). */
  backing: string | undefined;
  /** Devices stacked on this one (device mapper, RAID): while any exist, it is in use. */
  holders: string[];
  autoclear: boolean;
  /** Its mounts in the worker's mount namespace. */
  mounts: MountEntry[];
  /** Every mount of the namespace, from the same read. */
  allMounts: MountEntry[];
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** What stopInstance records before it runs the stop command with an idempotency key. */
interface StopRecord {
  idempotencyKey: string;
  instanceId: string;
  bootId: string;
  recordedAt: string;
}

export class LinuxProvider implements Provider {
  readonly name: string;
  readonly supportsForce = true;
  readonly maxBatch = LINUX_MAX_BATCH;
  readonly volumeDir: string | undefined;
  readonly devicePatterns: readonly string[];
  readonly instanceId: string;
  readonly stateDir: string;
  private readonly matchesPattern: (path: string) => boolean;
  private readonly stopArgv: string[] | undefined;
  private readonly commandTimeoutMs: number;
  private readonly note: (message: string, level?: 'info' | 'warn') => void;
  private readonly readBootId: () => Promise<string>;
  private readonly readMountInfo: () => Promise<string>;
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
    // The environment is the fallback so a worker configured through worker/config.ts
    // gets every linux variable even where its caller passes only some of them.
    const dir = options.volumeDir ?? process.env.STOPFLOW_LINUX_VOLUME_DIR;
    this.volumeDir = dir?.trim() ? resolvePath(dir) : undefined;
    this.devicePatterns = options.devicePatterns ?? parseDevicePatterns(process.env.STOPFLOW_LINUX_DEVICES ?? '');
    for (const pattern of this.devicePatterns) checkDevicePattern(pattern);
    const match = this.devicePatterns.length > 0 ? picomatch([...this.devicePatterns]) : undefined;
    this.matchesPattern = (path) => match?.(path) ?? false;
    this.instanceId = options.instanceId ?? (process.env.STOPFLOW_LINUX_INSTANCE_ID?.trim() || hostname());
    this.stateDir = resolvePath(
      options.stateDir ?? (process.env.STOPFLOW_LINUX_STATE_DIR?.trim() || DEFAULT_LINUX_STATE_DIR),
    );
    this.stopArgv = options.stopCommand?.trim() ? splitCommand(options.stopCommand) : undefined;
    this.commandTimeoutMs = options.commandTimeoutMs ?? 120_000;
    this.note = options.log ?? defaultNote;
    this.readBootId = options.readBootId ?? readKernelBootId;
    this.readMountInfo = options.readMountInfo ?? (() => readFile('/proc/self/mountinfo', 'utf8'));
  }

  async listAttachedVolumes(instanceId: string, options: CallOptions = {}): Promise<VolumeRef[]> {
    this.checkCall(instanceId, options);
    const names = (await readdir('/sys/block')).filter((n) => LOOP_NAME.test(n));
    const table = parseMountInfo(await this.readMountInfo());
    const volumes: VolumeRef[] = [];
    for (const name of names.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))) {
      if ((await readSys(`/sys/block/${name}/loop/backing_file`)) === undefined) continue; // unbound
      if ((await readSys(`/sys/block/${name}/ro`)) === '1') continue; // a read-only image (snap, squashfs)
      const path = `/dev/${name}`;
      const info = await this.inspect({ name, path, requestedAs: path }, table);
      if ((await this.refusal(info)) !== undefined) continue; // not the operator's to touch
      const system = protectedMount(info);
      if (system) {
        this.note(`linux provider "${this.name}": not listing ${path}: it is mounted at ${system.mountPoint}`, 'warn');
        continue;
      }
      volumes.push({ volumeId: name, device: path });
    }
    return volumes;
  }

  async detachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<void> {
    this.checkCall(instanceId, options);
    const device = await this.locate(volume);
    if (!device) return;
    await this.exclusive(device.name, async () => {
      const table = parseMountInfo(await this.readMountInfo());
      const info = await this.inspectAllowed(device, table);
      if (await this.isDetached(info)) {
        this.requested.delete(device.name);
        return;
      }
      this.requested.set(device.name, info.generation);
      // A busy mount leaves the volume `detaching`; the state checks keep trying.
      await this.advance(info, false, options.signal);
    });
  }

  async getAttachmentState(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<AttachmentState> {
    const [state] = await this.getAttachmentStates([{ instanceId, volume }], options);
    return state as AttachmentState;
  }

  /** Many volumes at once: one mountinfo read for the whole batch, then each device's sysfs and an O_EXCL open. */
  async getAttachmentStates(
    targets: readonly VolumeOfInstance[],
    options: CallOptions = {},
  ): Promise<AttachmentState[]> {
    for (const target of targets) this.checkCall(target.instanceId, options);
    if (targets.length > this.maxBatch) {
      throw new PermanentProviderError(
        `linux: at most ${this.maxBatch} volumes per state check, got ${targets.length}`,
      );
    }
    const devices = await Promise.all(targets.map((target) => this.locate(target.volume)));
    const table = devices.some(Boolean) ? parseMountInfo(await this.readMountInfo()) : [];
    return mapLimit(devices, BATCH_CONCURRENCY, (device) =>
      device ? this.exclusive(device.name, () => this.stateOf(device, table, options.signal)) : 'detached',
    );
  }

  async forceDetachVolume(instanceId: string, volume: VolumeRef, options: CallOptions = {}): Promise<ForceAnswer> {
    this.checkCall(instanceId, options);
    const device = await this.locate(volume);
    // Not read first (forceRefusesDetached is not declared): `sent` throughout, the audit's safe side.
    if (!device) return 'sent';
    await this.exclusive(device.name, async () => {
      const table = parseMountInfo(await this.readMountInfo());
      const info = await this.inspectAllowed(device, table);
      if (await this.isDetached(info)) return;
      this.requested.set(device.name, info.generation);
      await this.advance(info, true, options.signal);
    });
    return 'sent';
  }

  async stopInstance(instanceId: string, options: CallOptions = {}): Promise<void> {
    this.checkCall(instanceId, options);
    if (!this.stopArgv) {
      this.note(
        `linux provider "${this.name}": no stopCommand configured, so stopping ${instanceId} does nothing; every volume is detached`,
      );
      return;
    }
    if (options.idempotencyKey !== undefined && (await this.ranBeforeReboot(options.idempotencyKey, instanceId))) {
      return;
    }
    const argv = this.stopArgv.map((arg) => arg.replaceAll('{instanceId}', instanceId));
    const [program, ...args] = argv as [string, ...string[]];
    const result = await this.run(program, args, { STOPFLOW_INSTANCE_ID: instanceId }, options.signal);
    if (result.code === 0) return;
    // The command line and its output may hold secrets or host details: they go to the worker's
    // log, never into the error, which Temporal keeps in the stop's history.
    this.note(
      `linux provider "${this.name}": stop command ${JSON.stringify(argv.join(' '))} for ${instanceId} exited with code ${result.code}: ${tail(result.stderr || result.stdout)}`,
      'warn',
    );
    const detail =
      result.code === 124
        ? `stop command exited with code 124 (killed after its ${this.commandTimeoutMs}ms timeout; output in the worker log)`
        : `stop command exited with code ${result.code} (output in the worker log)`;
    // 126/127: the shell conventions for "cannot execute" and "not found"; the spawn error maps to 127 too.
    if (result.code === 126 || result.code === 127) throw new PermanentProviderError(detail);
    throw new TransientProviderError(detail);
  }

  /** The worker can unmount and release loop devices: an allow-list, root, umount, losetup, mountinfo, the state dir. */
  async checkUsable(): Promise<void> {
    const unconfigured = this.unconfigured();
    if (unconfigured) throw new Error(unconfigured);
    const uid = process.getuid?.();
    if (uid !== undefined && uid !== 0) {
      throw new Error(
        `linux provider "${this.name}" needs root (CAP_SYS_ADMIN) to unmount and release loop devices; the worker runs as uid ${uid}`,
      );
    }
    await this.readMountInfo();
    for (const tool of ['umount', 'losetup']) {
      const result = await this.run(tool, ['--version']);
      if (result.code !== 0)
        throw new Error(`linux provider "${this.name}": ${tool} is not usable: ${tail(result.stderr)}`);
    }
    if (this.volumeDir) await stat(this.volumeDir);
    if (this.stopArgv) {
      await mkdir(this.stateDir, { recursive: true, mode: 0o700 });
      await access(this.stateDir, fsConstants.W_OK);
      await this.readBootId();
    }
  }

  // --- internals ---

  /** Why this provider cannot serve any call, or undefined when it can. */
  private unconfigured(): string | undefined {
    if (this.volumeDir || this.devicePatterns.length > 0) return undefined;
    return (
      `linux provider "${this.name}" has no allow-list, so it touches no device: set STOPFLOW_LINUX_VOLUME_DIR ` +
      '(a directory whose loop images are the volumes) or STOPFLOW_LINUX_DEVICES (globs of device paths such as ' +
      '/dev/nvme[1-9]n1), or the options volumeDir / devicePatterns'
    );
  }

  /** The checks every call starts with: configured, this host's instance, not cancelled. */
  private checkCall(instanceId: string, options: CallOptions): void {
    const unconfigured = this.unconfigured();
    if (unconfigured) throw new PermanentProviderError(unconfigured);
    if (instanceId !== this.instanceId) {
      throw new PermanentProviderError(
        `this worker's ${this.name} provider serves instance ${this.instanceId}; route stops of ${instanceId} to that host's worker`,
      );
    }
    options.signal?.throwIfAborted();
  }

  /** Resolves a volume to its device; `undefined` when no such device exists (nothing is attached). */
  private async locate(volume: VolumeRef): Promise<Located | undefined> {
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
    return { name, path: real, requestedAs: path };
  }

  /** Reads sysfs for the device and picks its mounts out of `table` (one mountinfo read, maybe shared). */
  private async inspect(device: Located, table: MountEntry[]): Promise<DeviceInfo> {
    const { name, path } = device;
    const devs = new Set<string>();
    const sources = new Set<string>([path]);
    const partitions: string[] = [];
    const own = await readSys(`/sys/class/block/${name}/dev`);
    if (own) devs.add(own);
    const holders = await listDir(`/sys/class/block/${name}/holders`);
    for (const entry of await listDir(`/sys/class/block/${name}`)) {
      if ((await readSys(`/sys/class/block/${name}/${entry}/partition`)) === undefined) continue;
      const dev = await readSys(`/sys/class/block/${name}/${entry}/dev`);
      if (dev) devs.add(dev);
      sources.add(`/dev/${entry}`);
      partitions.push(`/dev/${entry}`);
      holders.push(...(await listDir(`/sys/class/block/${name}/${entry}/holders`)));
    }
    const loop = LOOP_NAME.test(name);
    return {
      ...device,
      generation: (await readSys(`/sys/class/block/${name}/diskseq`)) ?? '',
      devs,
      sources,
      partitions,
      loop,
      backing: loop ? await readSys(`/sys/block/${name}/loop/backing_file`) : undefined,
      holders,
      autoclear: loop && (await readSys(`/sys/block/${name}/loop/autoclear`)) === '1',
      mounts: table.filter((m) => devs.has(m.dev) || sources.has(m.source)),
      allMounts: table,
    };
  }

  /** `inspect`, then the refusals: outside the allow-list, or mounted at a system mount point. */
  private async inspectAllowed(device: Located, table: MountEntry[]): Promise<DeviceInfo> {
    const info = await this.inspect(device, table);
    const refusal = await this.refusal(info);
    if (refusal) throw new PermanentProviderError(refusal);
    const system = protectedMount(info);
    if (system) {
      throw new PermanentProviderError(
        `linux: refusing ${describeDevice(info)}: ${system.source} is mounted at ${system.mountPoint}, a system mount point ` +
          `(${PROTECTED_MOUNT_POINTS.join(', ')}, or a parent of one), which stopflow never unmounts`,
      );
    }
    return info;
  }

  /** Why the operator's allow-list does not cover this device, or undefined when it does. */
  private async refusal(info: DeviceInfo): Promise<string | undefined> {
    if (this.matchesPattern(info.path)) return undefined;
    let volumeRule: string;
    if (!this.volumeDir) {
      volumeRule = 'no STOPFLOW_LINUX_VOLUME_DIR is set';
    } else if (!info.loop) {
      volumeRule = `it is not a loop device backed by a file under ${this.volumeDir} (STOPFLOW_LINUX_VOLUME_DIR)`;
    } else if (info.backing === undefined) {
      // An unbound loop device holds nothing and is touched by nothing but the state check.
      return undefined;
    } else {
      const dir = await realpath(this.volumeDir).catch(() => this.volumeDir as string);
      if (info.backing.startsWith(`${dir}/`)) return undefined;
      volumeRule = `its backing file ${info.backing} is not under ${dir} (STOPFLOW_LINUX_VOLUME_DIR)`;
    }
    const patternRule =
      this.devicePatterns.length > 0
        ? `${info.path} matches none of ${this.devicePatterns.join(', ')} (STOPFLOW_LINUX_DEVICES)`
        : 'no STOPFLOW_LINUX_DEVICES is set';
    return (
      `linux: refusing ${describeDevice(info)}: it is not on this worker's allow-list: ${volumeRule}, and ${patternRule}. ` +
      `To allow it, add a pattern matching ${info.path} to STOPFLOW_LINUX_DEVICES (option devicePatterns), or back ` +
      'the loop device by a file under STOPFLOW_LINUX_VOLUME_DIR (option volumeDir)'
    );
  }

  /** One device's state, from the batch's mountinfo read; a requested detach is tried again first. */
  private async stateOf(device: Located, table: MountEntry[], signal?: AbortSignal): Promise<AttachmentState> {
    let info = await this.inspectAllowed(device, table);
    if (await this.isDetached(info)) {
      this.requested.delete(device.name);
      return 'detached';
    }
    if (this.requested.get(device.name) !== info.generation) return 'attached';
    // This provider is the control plane that works on a requested detach: try it again.
    const unmounted = await this.advance(info, false, signal);
    info = await this.inspect(
      device,
      table.filter((m) => !unmounted.has(m.id)),
    );
    if (await this.isDetached(info)) {
      this.requested.delete(device.name);
      return 'detached';
    }
    return 'detaching';
  }

  /**
   * Nothing holds the device anywhere. Mountinfo and sysfs first (cheap, and they say
   * why), then the authority: an exclusive open of the device and each partition,
   * which the kernel refuses while any mount namespace mounts it or anything claims it.
   */
  private async isDetached(info: DeviceInfo): Promise<boolean> {
    if (info.mounts.length > 0 || info.holders.length > 0) return false;
    // A bound loop device still exposes its backing file; autoclear releases it once no one holds it.
    if (info.loop && info.backing !== undefined && !info.autoclear) return false;
    for (const path of [info.path, ...info.partitions]) {
      if (await claimed(path)) return false;
    }
    return true;
  }

  /**
   * Moves a detach forward as far as the host allows: unmount (lazily when
   * forced) every mount of the device, deepest first, then release a loop
   * device. A busy mount on the graceful path stops here, quietly: the volume
   * stays `detaching`. Returns the ids of the mounts that are gone.
   */
  private async advance(info: DeviceInfo, lazy: boolean, signal: AbortSignal | undefined): Promise<Set<number>> {
    const unmounted = new Set<number>();
    const ours = new Set(info.mounts.map((m) => m.id));
    for (const mount of info.mounts) {
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
      if (info.mounts.length === 0) return unmounted; // stays `detaching` until the holders are gone
    }
    const ordered = [...info.mounts].sort((a, b) => depth(b.mountPoint) - depth(a.mountPoint) || b.id - a.id);
    for (const mount of ordered) {
      const result = await this.run(
        'umount',
        lazy ? ['-l', '--', mount.mountPoint] : ['--', mount.mountPoint],
        {},
        signal,
      );
      if (result.code === 0) {
        unmounted.add(mount.id);
        continue;
      }
      const why = tail(result.stderr || result.stdout);
      if (/busy/i.test(why)) {
        if (lazy) throw new TransientProviderError(`linux: lazy unmount of ${mount.mountPoint} failed: ${why}`);
        return unmounted; // a real stuck detach: stays `detaching`, tried again on the next state check
      }
      // Only here is mountinfo read again: the mount may have gone meanwhile (another unmount won the race).
      const now = parseMountInfo(await this.readMountInfo());
      if (!now.some((m) => m.id === mount.id)) {
        unmounted.add(mount.id);
        continue;
      }
      if (/superuser|permission|not permitted/i.test(why)) {
        throw new PermanentProviderError(`linux: cannot unmount ${mount.mountPoint} (${info.path}): ${why}`);
      }
      throw new TransientProviderError(`linux: unmount of ${mount.mountPoint} (${info.path}) failed: ${why}`);
    }
    if (!info.loop) return unmounted;
    const holders = await listDir(`/sys/class/block/${info.name}/holders`);
    const bound = (await readSys(`/sys/block/${info.name}/loop/backing_file`)) !== undefined;
    const autoclear = (await readSys(`/sys/block/${info.name}/loop/autoclear`)) === '1';
    if (holders.length > 0 || !bound || autoclear) return unmounted;
    // Busy elsewhere (another namespace still mounts it), the kernel sets autoclear instead: released when it lets go.
    const result = await this.run('losetup', ['-d', info.path], {}, signal);
    if (result.code === 0) return unmounted;
    const why = tail(result.stderr || result.stdout);
    if (/No such device|not a loop|ENXIO/i.test(why)) return unmounted; // released meanwhile
    if (/busy/i.test(why)) {
      if (lazy) throw new TransientProviderError(`linux: release of ${info.path} failed: ${why}`);
      return unmounted;
    }
    if (/permission|not permitted/i.test(why)) {
      throw new PermanentProviderError(`linux: cannot release ${info.path}: ${why}`);
    }
    throw new TransientProviderError(`linux: release of ${info.path} failed: ${why}`);
  }

  /**
   * Whether this stop already ran its stop command on an earlier boot. Records the
   * current boot id under the key first (atomically), so a retry after the host
   * rebooted finds a different one and does not power it off again; a retry on the
   * same boot runs the command again (it may never have run).
   */
  private async ranBeforeReboot(idempotencyKey: string, instanceId: string): Promise<boolean> {
    const bootId = await this.readBootId();
    const file = join(
      this.stateDir,
      `stop-${createHash('sha256').update(idempotencyKey).digest('hex').slice(0, 32)}.json`,
    );
    const previous = await this.readStopRecord(file);
    if (previous?.idempotencyKey === idempotencyKey && previous.bootId !== bootId) {
      this.note(
        `linux provider "${this.name}": stop of ${instanceId} already ran its stop command at ${previous.recordedAt} on boot ${previous.bootId}; the host has rebooted since (boot ${bootId}), so it is done`,
      );
      return true;
    }
    if (previous?.idempotencyKey !== idempotencyKey || previous.bootId !== bootId) {
      const record: StopRecord = { idempotencyKey, instanceId, bootId, recordedAt: new Date().toISOString() };
      try {
        await writeFileAtomic(file, `${JSON.stringify(record)}\n`);
      } catch (err) {
        // Without the record a retry after the reboot would power the host off again: do not run it.
        const code = (err as NodeJS.ErrnoException).code;
        const message = `linux: cannot record the stop in ${this.stateDir} (STOPFLOW_LINUX_STATE_DIR): ${(err as Error).message}`;
        throw code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
          ? new PermanentProviderError(message)
          : new TransientProviderError(message);
      }
    }
    return false;
  }

  private async readStopRecord(file: string): Promise<StopRecord | undefined> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new TransientProviderError(`linux: cannot read ${file}: ${(err as Error).message}`);
    }
    try {
      const parsed = JSON.parse(text) as Partial<StopRecord>;
      if (typeof parsed.idempotencyKey === 'string' && typeof parsed.bootId === 'string') {
        return {
          idempotencyKey: parsed.idempotencyKey,
          bootId: parsed.bootId,
          instanceId: String(parsed.instanceId),
          recordedAt: String(parsed.recordedAt),
        };
      }
    } catch {
      // Fall through: written atomically, so this is damage from outside; it is rewritten.
    }
    this.note(`linux provider "${this.name}": ignoring unreadable stop record ${file}`, 'warn');
    return undefined;
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

  /**
   * Runs a command without a shell, with a timeout, killed when `signal` aborts (the
   * promise then rejects with the signal's reason). The environment is built from
   * nothing: the worker's own holds Temporal and cloud credentials, which a stop
   * command or umount has no business seeing.
   */
  private run(
    program: string,
    args: string[],
    extraEnv: Record<string, string> = {},
    signal?: AbortSignal,
  ): Promise<RunResult> {
    signal?.throwIfAborted();
    return new Promise((resolveRun, rejectRun) => {
      execFile(
        program,
        args,
        {
          timeout: this.commandTimeoutMs,
          killSignal: 'SIGKILL',
          maxBuffer: 1024 * 1024,
          // Messages in English for classification; sbin on PATH for umount and losetup.
          env: { PATH: SBIN_PATH, LC_ALL: 'C', ...extraEnv },
          ...(signal ? { signal } : {}),
        },
        (error, stdout, stderr) => {
          if (!error) {
            resolveRun({ code: 0, stdout, stderr });
            return;
          }
          if (signal?.aborted) {
            rejectRun(signal.reason);
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

/**
 * Whether something holds the device exclusively (a mount in any namespace, swap, a
 * device mapper table): the kernel refuses our O_EXCL open with EBUSY. The open is
 * closed at once; it is read-only and never reads a byte.
 */
async function claimed(path: string): Promise<boolean> {
  try {
    const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_EXCL);
    await handle.close();
    return false;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') return true;
    // Gone meanwhile, or no medium: nothing can hold it.
    if (code === 'ENOENT' || code === 'ENXIO' || code === 'ENODEV' || code === 'ENOMEDIUM') return false;
    if (code === 'EACCES' || code === 'EPERM') {
      throw new PermanentProviderError(`linux: cannot open ${path} to check who holds it: ${(err as Error).message}`);
    }
    throw new TransientProviderError(`linux: cannot open ${path} to check who holds it: ${(err as Error).message}`);
  }
}

/** The first mount of the device or a partition at a system mount point, if any. */
function protectedMount(info: DeviceInfo): MountEntry | undefined {
  return info.mounts.find((m) => isProtectedMountPoint(m.mountPoint));
}

/** A mount point in PROTECTED_MOUNT_POINTS, or a parent of one (`/var/lib`). */
export function isProtectedMountPoint(mountPoint: string): boolean {
  const path = mountPoint.length > 1 ? mountPoint.replace(/\/+$/, '') : mountPoint;
  const prefix = path === '/' ? '/' : `${path}/`;
  return PROTECTED_MOUNT_POINTS.some((system) => system === path || system.startsWith(prefix));
}

function describeDevice(info: Located): string {
  return info.requestedAs === info.path ? info.path : `${info.path} (named as ${info.requestedAs})`;
}

/**
 * STOPFLOW_LINUX_DEVICES: comma-separated globs over resolved device paths. Throws
 * with the rule when a pattern is not one.
 */
export function parseDevicePatterns(text: string): string[] {
  const patterns = text
    .split(',')
    .map((pattern) => pattern.trim())
    .filter(Boolean);
  for (const pattern of patterns) checkDevicePattern(pattern);
  return patterns;
}

function checkDevicePattern(pattern: string): void {
  const rule = `device pattern ${JSON.stringify(pattern)} must be a glob over device paths such as /dev/nvme[1-9]n1 or /dev/xvd[f-z]`;
  if (!DEVICE_GLOB.test(pattern) || pattern.split('/').includes('..')) throw new Error(rule);
  // Patterns are matched against the device's real path, so a symlink's name never matches.
  if (/^\/dev\/(disk|mapper)\//.test(pattern)) {
    throw new Error(`${rule}: it is matched against the real device path (/dev/nvme1n1, /dev/dm-0), not a symlink`);
  }
  try {
    picomatch.makeRe(pattern);
  } catch (err) {
    throw new Error(`${rule}: ${(err as Error).message}`);
  }
}

/** The task queue a linux worker polls when none is configured: one per host, so hosts never share stops. */
export function linuxTaskQueue(instanceId: string): string {
  return `stopflow-linux-${instanceId}`.replace(/\s/g, '-').slice(0, 255);
}

/** Whether an instance id can be the linux provider's: the rule every StopRequest's instanceId follows. */
export function isLinuxInstanceId(instanceId: string): boolean {
  return INSTANCE_ID.test(instanceId);
}

/** Writes a file so that a crash leaves the old content or the new, never a mix: temp file, fsync, rename, fsync dir. */
async function writeFileAtomic(file: string, content: string): Promise<void> {
  const dir = dirname(file);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const temp = join(dir, `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const handle = await open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(content);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, file);
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  const dirHandle = await open(dir, 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
}

async function readKernelBootId(): Promise<string> {
  return (await readFile('/proc/sys/kernel/random/boot_id', 'utf8')).trim();
}

/** Like Promise.all over `items`, at most `limit` at a time, results in order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R> | R): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
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

function defaultNote(message: string, level: 'info' | 'warn' = 'info'): void {
  try {
    log[level](message);
  } catch {
    process.stderr.write(`${message}\n`);
  }
}
