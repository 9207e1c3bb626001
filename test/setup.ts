// Tests must not inherit the developer's Vagrant, kubectl or colour settings.
for (const name of Object.keys(process.env)) {
  if (name.startsWith("VAGRANT_")) delete process.env[name];
}
delete process.env.KUBECONFIG;
delete process.env.FORCE_COLOR;
process.env.NO_COLOR = "1";
process.env.VAGRANT_CHECKPOINT_DISABLE = "1";
