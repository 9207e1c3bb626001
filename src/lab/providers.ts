/** The Vagrant providers a lab can run on (a module of its own: the CLI's options load it at start). */
export const PROVIDERS = ["virtualbox", "libvirt"] as const;
export type ProviderName = (typeof PROVIDERS)[number];
