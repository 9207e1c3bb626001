export { pullImages, imageArchivePath } from "./pull.js";
export type { PullImagesOptions, PulledImage } from "./pull.js";
export { parseImageRef, mirroredRepository } from "./reference.js";
export type { ImageRef, Repository } from "./reference.js";
export { dockerConfigPath } from "./docker-config.js";
export { imagePinsPath } from "./pins.js";
