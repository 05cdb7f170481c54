-- 0021 the task board: tasks keyed (project, id), their dependency edges ("task requires
-- other"; a spec's "blocks" are stored as edges the other way), their labels, and each
-- task's history. A claim takes the best open task whose every requirement is done
-- (corral_tasks_open, corral_tasks_project_open); a claim's lease lapses at expires_at
-- (corral_tasks_claimed); a run's claims are found by corral_tasks_run.
CREATE TABLE corral_tasks (
    project TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
    requires TEXT NOT NULL DEFAULT '[]',
    labels TEXT NOT NULL DEFAULT '[]',
    acceptance TEXT NOT NULL DEFAULT '[]',
    extra TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'claimed', 'done', 'failed', 'cancelled')),
    assignee TEXT,
    run_id TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    claimed_at TEXT,
    heartbeat_at TEXT,
    expires_at TEXT,
    result TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project, id)
);

CREATE INDEX corral_tasks_open ON corral_tasks (priority DESC, created_at, id, project)
    WHERE status = 'open';
CREATE INDEX corral_tasks_project_open ON corral_tasks (project, priority DESC, created_at, id)
    WHERE status = 'open';
CREATE INDEX corral_tasks_claimed ON corral_tasks (expires_at) WHERE status = 'claimed';
CREATE INDEX corral_tasks_run ON corral_tasks (run_id) WHERE status = 'claimed';
CREATE INDEX corral_tasks_status ON corral_tasks (status, project, id);
CREATE INDEX corral_tasks_id ON corral_tasks (id);

CREATE TABLE corral_task_edges (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    requires TEXT NOT NULL,
    PRIMARY KEY (project, task_id, requires),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE,
    FOREIGN KEY (project, requires) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_edges_requires ON corral_task_edges (project, requires, task_id);

CREATE TABLE corral_task_labels (
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (project, task_id, label),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_labels_label ON corral_task_labels (label, project, task_id);

CREATE TABLE corral_task_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    task_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT,
    token INTEGER,
    detail TEXT,
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_events_task ON corral_task_events (project, task_id, seq);
