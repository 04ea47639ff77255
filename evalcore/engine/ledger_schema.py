"""The run ledger's tables, as the numbered migrations that create and upgrade them (schema 1:
runs, partitions, attempts, samples, results, loads; 2: results in versions; 3: backend paths).
What the rows mean and who writes them: `evalcore.engine.ledger`. A new schema is one more
migration here, never an edit of an old one (files written by an older evalcore upgrade in place).
"""

from __future__ import annotations

from evalcore.engine import db

APPLICATION_ID = 0x4556434C  # "EVCL"


_V1 = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        work_dir TEXT NOT NULL,
        plan_json TEXT NOT NULL,
        argv_json TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
        partitions_hash TEXT NOT NULL,
        n_partitions INTEGER NOT NULL
    )""",
    """CREATE TABLE partitions (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        partition_id TEXT NOT NULL,
        model_key TEXT NOT NULL,
        dataset_key TEXT NOT NULL,
        key_hash TEXT NOT NULL,
        key_json TEXT NOT NULL,
        spec_json TEXT NOT NULL,
        sample_start INTEGER NOT NULL,
        sample_end INTEGER NOT NULL,
        n_samples INTEGER NOT NULL,
        n_done INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL,
        n_gpus INTEGER NOT NULL DEFAULT 1 CHECK (n_gpus >= 0),
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'running', 'done', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
        claim_token TEXT,
        claimed_by TEXT,
        pid INTEGER,
        host TEXT,
        heartbeat_at REAL,
        expires_at REAL,
        error_class TEXT,
        error_message TEXT,
        error_traceback TEXT,
        started_at REAL,
        finished_at REAL,
        PRIMARY KEY (run_id, partition_id),
        CHECK (sample_end >= sample_start AND n_samples = sample_end - sample_start)
    )""",
    # The claim order is an index walk: pending rows of one run, by model, dataset, first sample.
    """CREATE INDEX partitions_claim
        ON partitions (run_id, status, model_key, dataset_key, sample_start, partition_id)""",
    "CREATE INDEX partitions_expiry ON partitions (run_id, status, expires_at)",
    """CREATE TABLE attempts (
        token TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        partition_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        pid INTEGER,
        host TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT NOT NULL DEFAULT 'running'
            CHECK (outcome IN ('running', 'done', 'retry', 'failed', 'expired', 'requeued', 'released')),
        error_class TEXT,
        error_message TEXT,
        error_traceback TEXT,
        FOREIGN KEY (run_id, partition_id) REFERENCES partitions (run_id, partition_id)
    )""",
    "CREATE INDEX attempts_partition ON attempts (run_id, partition_id, outcome)",
    """CREATE TABLE samples (
        run_id TEXT NOT NULL,
        partition_id TEXT NOT NULL,
        sample_index INTEGER NOT NULL,
        output_json TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, partition_id, sample_index),
        FOREIGN KEY (run_id, partition_id) REFERENCES partitions (run_id, partition_id)
    )""",
    """CREATE TABLE results (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        model_key TEXT NOT NULL,
        dataset_key TEXT NOT NULL,
        metric TEXT NOT NULL,
        value REAL,
        stderr REAL,
        n INTEGER,
        PRIMARY KEY (run_id, model_key, dataset_key, metric)
    )""",
    """CREATE TABLE loads (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        worker_id TEXT NOT NULL,
        model_key TEXT NOT NULL,
        started_at REAL NOT NULL,
        seconds REAL NOT NULL
    )""",
    "CREATE INDEX loads_run ON loads (run_id, started_at)",
)


# Schema 2: results come in versions (1 = what `eval` computed; `rescore` adds more, the old ones
# stay), and rows per subtask (MMLU subjects; '' = the whole dataset).
_V2 = (
    """CREATE TABLE result_versions (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        version INTEGER NOT NULL CHECK (version >= 1),
        created_at REAL NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('eval', 'rescore')),
        settings_json TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (run_id, version)
    )""",
    """CREATE TABLE results_v2 (
        run_id TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        model_key TEXT NOT NULL,
        dataset_key TEXT NOT NULL,
        subtask TEXT NOT NULL DEFAULT '',
        metric TEXT NOT NULL,
        value REAL,
        stderr REAL,
        n INTEGER,
        PRIMARY KEY (run_id, version, model_key, dataset_key, subtask, metric),
        FOREIGN KEY (run_id, version) REFERENCES result_versions (run_id, version)
    )""",
    """INSERT INTO result_versions (run_id, version, created_at, kind)
        SELECT DISTINCT r.run_id, 1, runs.updated_at, 'eval' FROM results r JOIN runs USING (run_id)""",
    """INSERT INTO results_v2 (run_id, version, model_key, dataset_key, subtask, metric, value, stderr, n)
        SELECT run_id, 1, model_key, dataset_key, '', metric, value, stderr, n FROM results""",
    "DROP TABLE results",
    "ALTER TABLE results_v2 RENAME TO results",
)

# Schema 3: what each worker's backend did for a model (fast paths, fallbacks and why).
_V3 = (
    """CREATE TABLE backend_paths (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        worker_id TEXT NOT NULL,
        model_key TEXT NOT NULL,
        paths_json TEXT NOT NULL,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (run_id, worker_id, model_key)
    )""",
)

SCHEMA = db.Schema(label="run ledger", application_id=APPLICATION_ID,
                   migrations={1: db.script(_V1), 2: db.script(_V2), 3: db.script(_V3)})
