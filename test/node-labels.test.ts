import { describe, expect, it } from "vitest";
import { validateLabText } from "../src/lab/load.js";
import { planLab } from "../src/plan/plan.js";
import { renderLab } from "../src/render/render.js";
import { editedLab } from "./helpers/labs.js";

/** Seed 000's schedulable master and seed 003's node labels, as the kubelet phase renders them. */
describe("node labels and a schedulable master", () => {
  it("the lab's labels reach --node-labels, and a schedulable master has no taint", async () => {
    const { lab, problems } = validateLabText(
      "lab.yaml",
      editedLab("three-node", [
        [["cluster", "schedulableMaster"], true],
        [["nodes", 0, "labels"], { "example.org/disk": "ssd" }],
        [["nodes", 1, "labels"], { environment: "production", host: "azure" }],
      ]),
    );
    expect(problems.filter((p) => p.severity === "error")).toEqual([]);
    const files = await renderLab(planLab(lab!), { labFile: "lab.yaml" });
    const kubelet = (node: string) =>
      files.find((f) => f.path === `provision/${node}/kubelet.sh`)!.content;
    expect(kubelet("master")).toContain(
      "--node-labels=node-role.kubernetes.io/master=,example.org/disk=ssd \\\\",
    );
    expect(kubelet("master")).not.toContain("--register-with-taints");
    expect(kubelet("minion1")).toContain(
      "--node-labels=node-role.kubernetes.io/worker=,environment=production,host=azure \\\\",
    );
    const tainted = validateLabText("lab.yaml", editedLab("three-node", [])).lab!;
    const master = (await renderLab(planLab(tainted), { labFile: "lab.yaml" })).find(
      (f) => f.path === "provision/master/kubelet.sh",
    )!.content;
    expect(master).toContain("--register-with-taints=node-role.kubernetes.io/master=:NoSchedule");
  });
});
