-- One row per paused kind: a claim on any node starts nothing of a kind
-- listed here, and the list survives restarts.
CREATE TABLE longrun_paused_kinds (
    kind text PRIMARY KEY
);
