/**
 * Real block devices for the linux provider's tests: sparse files under a
 * temporary directory, bound to loop devices, formatted ext4 and mounted. A
 * child process (`sleep`) whose working directory is inside a mount holds it
 * busy, so `umount` fails with EBUSY exactly as a stuck detach does on a real
 * host.
 *
 * Two more ways to hold a volume: a mount stacked inside its mount (umount
 * fails with EBUSY, a lazy unmount takes both and frees the device at once),
 * and a mount of it in a second mount namespace (`unshare --mount`), which
 * /proc/self/mountinfo cannot see and which keeps the device busy after every
 * mount of the worker's namespace is gone.
 *
 * Cleanup is thorough because a leaked mount or loop device outlives the test
 * run: `cleanup()` kills the holders, lazily unmounts whatever is still
 * mounted under the lab's directory, releases the lab's loop devices (only
 * those whose backing file is in the lab's directory) and removes the files.
 * Call it from afterAll; `LoopLab.create` also sweeps what crashed runs left
 * behind (labs whose process is gone).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseMountInfo } from '../../activities/providers/linux';

const exec = promisify(execFile);
const LAB_PREFIX = 'stopflow-loop-';
const ENV = { ...process.env, LC_ALL: 'C', PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` };

/** Why loop-device tests cannot run here, or `undefined` when they can. Synchronous, for `describe.skipIf`. */
export function loopDevicesUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `loop devices need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'loop devices need root (mount, losetup); run the tests as root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control: load the loop module (modprobe loop)';
  const path = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`.split(':');
  for (const tool of ['losetup', 'mkfs.ext4', 'mount', 'umount']) {
    if (!path.some((dir) => dir && existsSync(join(dir, tool)))) {
      return `${tool} is missing (install util-linux and e2fsprogs)`;
    }
  }
  return undefined;
}

export interface LoopVolume {
  /** Kernel name, e.g. loop5: the linux provider's volumeId. */
  name: string;
  /** /dev/loop5 */
  device: string;
  image: string;
  /** Where it is mounted, or undefined when it was not mounted. */
  mountPoint: string | undefined;
}

export interface Holder {
  /** The process that holds the volume; undefined for a holder that is a mount. */
  pid: number | undefined;
  release(): Promise<void>;
}

/** How long a second namespace's holder lives at most: a crashed run leaves nothing behind for longer. */
const NAMESPACE_HOLD_SECONDS = 30;

export class LoopLab {
  readonly volumes: LoopVolume[] = [];
  private readonly holders = new Set<ChildProcess>();
  private counter = 0;

  private constructor(readonly dir: string) {}

  static async create(): Promise<LoopLab> {
    await sweepAbandonedLabs();
    // Real path: the kernel reports backing files resolved, and cleanup matches on them.
    const dir = await realpath(await mkdtemp(join(tmpdir(), `${LAB_PREFIX}${process.pid}-`)));
    await mkdir(join(dir, 'images'));
    await mkdir(join(dir, 'mnt'));
    return new LoopLab(dir);
  }

  /** Where the images live: the linux provider's `volumeDir` for this lab. */
  get imagesDir(): string {
    return join(this.dir, 'images');
  }

  /** A sparse file, bound to a free loop device (or `device`), ext4 on it, mounted under the lab (unless `mount: false`). */
  async makeVolume(options: { mount?: boolean; sizeMiB?: number; device?: string } = {}): Promise<LoopVolume> {
    const n = ++this.counter;
    const image = join(this.imagesDir, `vol-${n}.img`);
    const file = await open(image, 'w');
    try {
      await file.truncate((options.sizeMiB ?? 16) * 1024 * 1024);
    } finally {
      await file.close();
    }
    // A given device (to reuse a name on purpose), or the first free one.
    const { stdout } = await exec(
      'losetup',
      options.device ? ['--show', options.device, image] : ['--find', '--show', image],
      {
        env: ENV,
      },
    );
    const device = stdout.trim();
    const volume: LoopVolume = { name: device.replace('/dev/', ''), device, image, mountPoint: undefined };
    this.volumes.push(volume);
    await exec('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', device], { env: ENV });
    if (options.mount !== false) {
      const mountPoint = join(this.dir, 'mnt', `vol-${n}`);
      await mkdir(mountPoint);
      await exec('mount', ['-t', 'ext4', device, mountPoint], { env: ENV });
      volume.mountPoint = mountPoint;
    }
    return volume;
  }

  /** Makes the volume's mount busy: a child process whose working directory is inside it. */
  async holdBusy(volume: LoopVolume): Promise<Holder> {
    if (!volume.mountPoint) throw new Error(`${volume.device} is not mounted`);
    const child = spawn('sleep', ['3600'], { cwd: volume.mountPoint, stdio: 'ignore' });
    this.holders.add(child);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', reject);
    });
    const pid = child.pid as number;
    return {
      pid,
      release: async () => {
        await stopChild(child);
        this.holders.delete(child);
      },
    };
  }

  /**
   * Makes the volume's unmount fail with EBUSY without any process: a tmpfs mounted inside
   * its mount. A lazy unmount takes both, and nothing keeps the device busy afterwards.
   */
  async holdBusyByMount(volume: LoopVolume): Promise<Holder> {
    if (!volume.mountPoint) throw new Error(`${volume.device} is not mounted`);
    const inner = join(volume.mountPoint, 'pinned');
    await mkdir(inner, { recursive: true });
    await exec('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'stopflow-pin', inner], { env: ENV });
    return {
      pid: undefined,
      release: async () => {
        await exec('umount', ['--', inner], { env: ENV }).catch(() => undefined);
      },
    };
  }

  /**
   * Mounts the volume in a second, private mount namespace, held by a process there
   * (at most NAMESPACE_HOLD_SECONDS). The worker's mountinfo does not show that mount;
   * only the kernel's exclusive-open check sees that the device is still in use.
   */
  async holdInOtherNamespace(volume: LoopVolume): Promise<Holder> {
    const target = join(this.dir, 'ns', `${volume.name}-${++this.counter}`);
    await mkdir(target, { recursive: true });
    const child = spawn(
      'unshare',
      [
        '--mount',
        '--propagation',
        'private',
        'sh',
        '-c',
        // exec: the holder is this one process, so killing it ends the namespace and its mount.
        `mount -t ext4 -- "$0" "$1" && echo ready && exec sleep ${NAMESPACE_HOLD_SECONDS}`,
        volume.device,
        target,
      ],
      { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.holders.add(child);
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on('data', (chunk: Buffer) => {
        if (chunk.toString().includes('ready')) resolve();
      });
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`unshare exited with ${code} before mounting: ${stderr}`)));
    });
    return {
      pid: child.pid,
      release: async () => {
        await stopChild(child);
        this.holders.delete(child);
      },
    };
  }

  /** Mounts the volume a second time (a bind mount of its first mount point). */
  async bindMount(volume: LoopVolume, target: string): Promise<void> {
    if (!volume.mountPoint) throw new Error(`${volume.device} is not mounted`);
    await mkdir(target, { recursive: true });
    await exec('mount', ['--bind', volume.mountPoint, target], { env: ENV });
  }

  /** Mounts of this device in this process's namespace. */
  async mountsOf(volume: LoopVolume): Promise<string[]> {
    const dev = (await readFile(`/sys/class/block/${volume.name}/dev`, 'utf8')).trim();
    return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'))
      .filter((m) => m.dev === dev || m.source === volume.device)
      .map((m) => m.mountPoint);
  }

  /** Whether the loop device is still bound to this lab's image. */
  isBound(volume: LoopVolume): boolean {
    return backingFile(volume.name) === volume.image;
  }

  /** Whether the kernel will release the loop device when its last user closes it. */
  isAutoclear(volume: LoopVolume): boolean {
    return readSysSync(`/sys/block/${volume.name}/loop/autoclear`) === '1';
  }

  /** Releases holders and every mount and loop device of this lab; its directory stays for more volumes. */
  async reset(): Promise<void> {
    await Promise.all([...this.holders].map((child) => stopChild(child)));
    this.holders.clear();
    await releaseLabDevices(this.dir);
    this.volumes.length = 0;
  }

  /** Everything `reset` does, then deletes the lab's files. Never throws. */
  async cleanup(): Promise<void> {
    await this.reset().catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

/** Lazily unmounts every mount under `dir` (deepest first) and releases loop devices backed by files in it. */
async function releaseLabDevices(dir: string): Promise<void> {
  const mounts = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'))
    .filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
  for (const mount of mounts) {
    await exec('umount', ['-l', '--', mount.mountPoint], { env: ENV }).catch(() => undefined);
  }
  for (const name of loopNames()) {
    const backing = backingFile(name);
    if (backing?.startsWith(`${dir}/`)) {
      await exec('losetup', ['-d', `/dev/${name}`], { env: ENV }).catch(() => undefined);
    }
  }
}

/** Labs left by runs that crashed before their cleanup: their process is gone. */
async function sweepAbandonedLabs(): Promise<void> {
  const root = await realpath(tmpdir());
  const entries = await readdir(root).catch(() => [] as string[]);
  for (const entry of entries) {
    const match = entry.startsWith(LAB_PREFIX) ? /^(\d+)-/.exec(entry.slice(LAB_PREFIX.length)) : null;
    if (!match || processAlive(Number(match[1]))) continue;
    const dir = join(root, entry);
    await releaseLabDevices(dir);
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function loopNames(): string[] {
  try {
    return readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return [];
  }
}

function backingFile(name: string): string | undefined {
  return readSysSync(`/sys/block/${name}/loop/backing_file`);
}

function readSysSync(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}
