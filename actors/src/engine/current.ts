/**
 * The engine new runs are decided by. A change to what any engine decides is a new engine.
 * Engine 3 is engine 2's compiler with the ids of the runs a run starts in the reserved space
 * (engine/v2/ids.ts).
 */
export const CURRENT_ENGINE = 3;
