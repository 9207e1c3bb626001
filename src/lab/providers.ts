/** Where a lab's nodes run (a module of its own: the CLI's options load it at start). */
export const PROVIDERS = ["virtualbox", "libvirt", "ssh"] as const;
export type ProviderName = (typeof PROVIDERS)[number];

/** The providers that boot VMs with Vagrant; `ssh` labs run on machines that already exist. */
export const VAGRANT_PROVIDERS = ["virtualbox", "libvirt"] as const;
export type VagrantProviderName = (typeof VAGRANT_PROVIDERS)[number];

export function isVagrantProvider(name: string): name is VagrantProviderName {
  return (VAGRANT_PROVIDERS as readonly string[]).includes(name);
}
