-- Nothing to undo: the names it rewrote meant the same zones.
SELECT 1;
