import type { ReceiptSigner, ReceiptType } from '../../common/receipt';

/** Signs receipts asynchronously: what the plane's check awaits. */
export interface ReceiptBatcher {
  /** The receipt of `payload`, signed together with the others asked for in the same event-loop turn. */
  sign(type: ReceiptType, payload: object): Promise<string>;
}

export interface ReceiptBatcherOptions {
  /** Receipts signed together at most; a full batch is signed at once. Default 1024 (a path of 10 hashes). */
  maxBatch?: number;
  /** Told the size of each batch signed (a metric); must not throw. */
  onBatch?: (size: number) => void;
}

interface Pending {
  payload: object;
  resolve: (receipt: string) => void;
  reject: (err: unknown) => void;
}

export const DEFAULT_MAX_RECEIPT_BATCH = 1024;

/**
 * Group signing: one Ed25519 signature costs several times what the rest of a check does, so
 * concurrent decisions share one. Decisions are queued as they are made; once the event-loop
 * turn's I/O callbacks are done (setImmediate) the queue is signed as one batch
 * (common/receipt.ts), the signature made on libuv's thread pool while this thread goes on
 * deciding. While a batch is being signed the next one fills, and is signed as soon as the first
 * is done (or at once when `maxBatch` are waiting): a busy plane signs less the busier it is, and
 * a lone decision still gets a single receipt. The signer is asked for at each batch, so a
 * rotated key signs from the next one. If signing fails, every receipt of that batch is refused
 * with the error: no decision goes out unsigned.
 */
export function receiptBatcher(signer: () => ReceiptSigner, o: ReceiptBatcherOptions = {}): ReceiptBatcher {
  const max = Math.max(1, Math.trunc(o.maxBatch ?? DEFAULT_MAX_RECEIPT_BATCH));
  const queues = new Map<ReceiptType, Pending[]>();
  /** Batches being signed, by type: a type's queue waits for them, unless it is full. */
  const signing = new Map<ReceiptType, number>();
  const busy = (type: ReceiptType): boolean => (signing.get(type) ?? 0) > 0;
  let scheduled = false;

  const flush = (type: ReceiptType): void => {
    const queue = queues.get(type);
    if (!queue?.length) return;
    queues.delete(type);
    signing.set(type, (signing.get(type) ?? 0) + 1);
    const done = (): void => {
      signing.set(type, signing.get(type)! - 1);
      if (!busy(type) && queues.get(type)?.length) flush(type);
    };
    let signed: Promise<string[]>;
    try {
      signed = signer().signBatchAsync(
        type,
        queue.map((q) => q.payload),
      );
    } catch (err) {
      signed = Promise.reject(err);
    }
    signed.then(
      (receipts) => {
        done();
        if (receipts.length !== queue.length) {
          const err = new Error(`signed ${receipts.length} receipts for ${queue.length} decisions`);
          for (const q of queue) q.reject(err);
          return;
        }
        try {
          o.onBatch?.(queue.length);
        } catch {
          /* a metric must not hold back a decision */
        }
        queue.forEach((q, i) => q.resolve(receipts[i]!));
      },
      (err: unknown) => {
        done();
        for (const q of queue) q.reject(err);
      },
    );
  };
  const flushAll = (): void => {
    scheduled = false;
    for (const type of [...queues.keys()]) if (!busy(type)) flush(type);
  };

  return {
    sign(type, payload) {
      return new Promise<string>((resolve, reject) => {
        let queue = queues.get(type);
        if (!queue) queues.set(type, (queue = []));
        queue.push({ payload, resolve, reject });
        if (queue.length >= max) flush(type);
        else if (!scheduled && !busy(type)) {
          scheduled = true;
          setImmediate(flushAll);
        }
      });
    },
  };
}
