import { createHash } from "node:crypto";
import { Transform } from "node:stream";

/** A pass-through stage that hashes (sha256) and counts what flows through it. */
export interface HashingStream extends Transform {
  /** The hex sha256 of everything that passed; call once, at the end. */
  sha256(): string;
  /** Bytes that passed so far. */
  bytes(): number;
}

/** `onChunk` sees the running count after every chunk (for progress and stall timers). */
export function hashingStream(onChunk?: (bytes: number) => void): HashingStream {
  const hash = createHash("sha256");
  let bytes = 0;
  const stage = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      bytes += chunk.length;
      onChunk?.(bytes);
      done(null, chunk);
    },
  });
  return Object.assign(stage, { sha256: () => hash.digest("hex"), bytes: () => bytes });
}
