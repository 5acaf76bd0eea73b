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
 * Group signing: one Ed25519 signature costs several times what the rest of a check does, so the
 * decisions made in one event-loop turn (the concurrent /v1/check requests that arrived
 * together) share one: queued as they are made, signed as one batch (common/receipt.ts) once the
 * turn's I/O callbacks are done (setImmediate), or as soon as `maxBatch` are waiting. A lone
 * decision gets a single receipt, as before; a busy plane signs less the busier it is. The
 * signer is asked for at each batch, so a rotated key signs from the next one. If signing fails,
 * every receipt of that batch is refused with the error: no decision goes out unsigned.
 */
export function receiptBatcher(signer: () => ReceiptSigner, o: ReceiptBatcherOptions = {}): ReceiptBatcher {
  const max = Math.max(1, Math.trunc(o.maxBatch ?? DEFAULT_MAX_RECEIPT_BATCH));
  const queues = new Map<ReceiptType, Pending[]>();
  let scheduled = false;

  const flush = (type: ReceiptType, queue: Pending[]): void => {
    queues.delete(type);
    let receipts: string[];
    try {
      receipts = signer().signBatch(
        type,
        queue.map((q) => q.payload),
      );
      if (receipts.length !== queue.length) throw new Error(`signed ${receipts.length} receipts for ${queue.length} decisions`);
    } catch (err) {
      for (const q of queue) q.reject(err);
      return;
    }
    try {
      o.onBatch?.(queue.length);
    } catch {
      /* a metric must not hold back a decision */
    }
    queue.forEach((q, i) => q.resolve(receipts[i]!));
  };
  const flushAll = (): void => {
    scheduled = false;
    for (const [type, queue] of [...queues]) flush(type, queue);
  };

  return {
    sign(type, payload) {
      return new Promise<string>((resolve, reject) => {
        let queue = queues.get(type);
        if (!queue) queues.set(type, (queue = []));
        queue.push({ payload, resolve, reject });
        if (queue.length >= max) flush(type, queue);
        else if (!scheduled) {
          scheduled = true;
          setImmediate(flushAll);
        }
      });
    },
  };
}
