import { access, constants } from "node:fs/promises";
import { join } from "node:path";

/**
 * The builder VM and its Vagrant provider. image-builder-rpi's Vagrantfile (v1.9.0 and master)
 * sets VAGRANT_DEFAULT_PROVIDER to virtualbox and uses ubuntu/xenial64, a box published only for
 * VirtualBox. For Linux users without VirtualBox, k8slab runs the same Vagrantfile under
 * vagrant-libvirt through an override of its own, outside the checkout: Vagrant reads the file
 * named by VAGRANT_VAGRANTFILE (an absolute path works, and the checkout stays the project root),
 * which loads the checkout's Vagrantfile and then replaces the provider, the box and the shared
 * folder's type. The checkout itself is never edited.
 */

/** VirtualBox NAT: the guest reaches the host's loopback interface at this address. */
export const VIRTUALBOX_NAT_HOST = "10.0.2.2";
/** The seed's nginx listened on 8081. */
export const DEFAULT_KERNEL_PORT = 8081;

export const BUILDER_PROVIDERS = ["virtualbox", "libvirt"] as const;
export type BuilderProvider = (typeof BUILDER_PROVIDERS)[number];

/** Ubuntu 16.04 like ubuntu/xenial64, published for libvirt (the Docker install script needs xenial). */
export const LIBVIRT_BUILDER_BOX = "generic/ubuntu1604";
/** vagrant-libvirt's default management network: the host is its gateway. */
export const LIBVIRT_HOST_ADDRESS = "192.168.121.1";
/** The programs that make this machine an NFS server (Debian's nfs-kernel-server). */
export const NFS_SERVER_PROGRAMS = ["/usr/sbin/exportfs", "/sbin/exportfs"];

export interface BuilderVm {
  provider: BuilderProvider;
  /** Environment every vagrant command of the builder runs with. */
  env: Record<string, string>;
  /** The override Vagrantfile k8slab writes (libvirt only). */
  override?: { path: string; text: string };
}

/** The builder VM for a provider; `stateDir` is k8slab's own directory for the checkout. */
export function builderVm(
  provider: BuilderProvider,
  builderDir: string,
  stateDir: string,
  driver: "kvm" | "qemu" = "kvm",
): BuilderVm {
  if (provider === "virtualbox") return { provider, env: {} };
  const path = join(stateDir, "Vagrantfile");
  return {
    provider,
    env: { VAGRANT_VAGRANTFILE: path },
    override: { path, text: libvirtOverride(builderDir, driver) },
  };
}

/**
 * The override. `builderDir` is a plain path (preflight refuses anything but letters, digits and
 * ._/~+@:-), so it is safe inside a Ruby string.
 */
export function libvirtOverride(builderDir: string, driver: "kvm" | "qemu"): string {
  const dir = JSON.stringify(builderDir);
  return [
    "# -*- mode: ruby -*-",
    "# Written by k8slab build-hypriot-image. Runs the image builder VM of the checkout below under",
    "# vagrant-libvirt without changing the checkout: Vagrant reads this file (VAGRANT_VAGRANTFILE)",
    "# in the checkout's directory. The checkout's Vagrantfile chooses VirtualBox and a box made only",
    "# for it; this file loads that Vagrantfile, then replaces provider, box and shared folder type.",
    `checkout = ${dir}`,
    'load File.join(checkout, "Vagrantfile")',
    'ENV["VAGRANT_DEFAULT_PROVIDER"] = "libvirt"',
    "",
    "Vagrant.configure(2) do |config|",
    `  config.vm.box = ${JSON.stringify(LIBVIRT_BUILDER_BOX)}`,
    "  # make sd-image runs `docker run -v $(pwd):/workspace` against the VM's Docker, so the",
    "  # checkout is shared at the same path, both ways (the image is written there). NFS: Vagrant",
    "  # asks for your sudo password to add the export to /etc/exports.",
    '  config.vm.synced_folder checkout, checkout, type: "nfs", nfs_version: 4, nfs_udp: false',
    '  config.vm.synced_folder ".", "/vagrant", disabled: true',
    '  config.vm.provider "libvirt" do |libvirt|',
    `    libvirt.driver = ${JSON.stringify(driver)}`,
    "    libvirt.memory = 2048",
    "    libvirt.cpus = 2",
    "  end",
    "end",
    "",
  ].join("\n");
}

/** The provider a builder VM was created with, from Vagrant's .vagrant/machines/default/<provider>/id. */
export async function existingVmProvider(builderDir: string): Promise<BuilderProvider | undefined> {
  for (const provider of BUILDER_PROVIDERS) {
    try {
      await access(join(builderDir, ".vagrant", "machines", "default", provider, "id"));
      return provider;
    } catch {
      // not created with this provider
    }
  }
  return undefined;
}

export async function kvmUsable(device = "/dev/kvm"): Promise<boolean> {
  return access(device, constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
}

export async function anyExists(paths: readonly string[]): Promise<boolean> {
  for (const p of paths) {
    try {
      await access(p);
      return true;
    } catch {
      // next
    }
  }
  return false;
}
