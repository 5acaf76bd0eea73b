export { verifyAudit } from './verify';
export type { VerifyOptions, VerifyProgress, VerifyReport, Walked } from './types';
export { trustedKeys, type KeySources } from './keys';
export { CheckpointTable, walkCheckpoints, type WalkResult } from './checkpoints';
export { PeriodVerifier, type PeriodCheckOptions } from './periods';
export { verifyCalls, reportChainBreak, type CallCheckOptions, type CallsReport } from './calls';
