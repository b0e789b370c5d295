// The worker bundles this file: it must export every workflow and nothing with side effects but zod's settings for
// workflow code, imported first.
import './zod-config';

export { deliverStopEvent } from './deliver-stop-event';
export { stopInstance } from './stop-instance';
export { sweep } from './sweep';
