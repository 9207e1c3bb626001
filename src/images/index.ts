export { pullImages, imageArchivePath, findCachedImage, storeImageArchive } from "./pull.js";
export type { ArchiveRecord, CachedImage, PullImagesOptions, PulledImage } from "./pull.js";
export { parseImageRef, mirroredRepository } from "./reference.js";
export type { ImageRef, Repository } from "./reference.js";
export { dockerConfigPath } from "./docker-config.js";
export { imagePinsPath, readImagePins } from "./pins.js";
