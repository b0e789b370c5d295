// The worker bundles this file: it must export every workflow and nothing with side effects.
export { deliverStopEvent } from './deliver-stop-event';
export { stopInstance } from './stop-instance';
export { sweep } from './sweep';
