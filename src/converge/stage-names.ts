/** The stages of `create`, in order (a module of its own: the CLI's options load it at start). */
export const STAGE_NAMES = ["etcd", "network", "control-plane", "nodes", "addons"] as const;
export type StageName = (typeof STAGE_NAMES)[number];
