-- Sign-in sessions of the admin console. The cookie holds a random secret; only its SHA-256 is
-- stored, so reading this table does not let anyone sign in. A session belongs to a role and
-- remembers a hash of the token it was opened with: rotating a token ends its sessions. Every
-- daemon behind a load balancer sees the same table, so a session opened on one works on all.
CREATE TABLE chainsync.console_sessions (
    id_hash    bytea PRIMARY KEY,
    role       text NOT NULL CHECK (role IN ('admin', 'readonly')),
    -- hash of the token signed in with
    token_hash bytea NOT NULL,
    -- synchronizer token of the session's forms
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_idx ON chainsync.console_sessions (expires_at);
