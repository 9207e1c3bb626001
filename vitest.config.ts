import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    setupFiles: ["test/setup.ts"],
    // Sized for a loaded 2-core machine (CI may share it): many tests start processes, nodes,
    // etcd clusters. A test fails for a defect, never because the machine was busy.
    testTimeout: 300_000,
    hookTimeout: 600_000,
    pool: "forks",
  },
});
