-- 0021 the task board: tasks keyed (project, id), their dependency edges ("task requires
-- other"; a spec's "blocks" are stored as edges the other way), their labels, and each
-- task's history. A claim takes the best open task whose every requirement is done
-- (corral_tasks_open, corral_tasks_project_open); a claim's lease lapses at expires_at
-- (corral_tasks_claimed); a run's claims are found by corral_tasks_run.
CREATE TABLE corral_tasks (
    project text NOT NULL,
    id text NOT NULL,
    title text NOT NULL,
    description text NOT NULL DEFAULT '',
    priority integer NOT NULL CHECK (priority BETWEEN 1 AND 10),
    requires jsonb NOT NULL DEFAULT '[]',
    labels jsonb NOT NULL DEFAULT '[]',
    acceptance jsonb NOT NULL DEFAULT '[]',
    extra jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'claimed', 'done', 'failed', 'cancelled')),
    assignee text,
    run_id text,
    token bigint NOT NULL DEFAULT 0,
    claimed_at timestamptz,
    heartbeat_at timestamptz,
    expires_at timestamptz,
    result text,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
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
    project text NOT NULL,
    task_id text NOT NULL,
    requires text NOT NULL,
    PRIMARY KEY (project, task_id, requires),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE,
    FOREIGN KEY (project, requires) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_edges_requires ON corral_task_edges (project, requires, task_id);

CREATE TABLE corral_task_labels (
    project text NOT NULL,
    task_id text NOT NULL,
    label text NOT NULL,
    PRIMARY KEY (project, task_id, label),
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_labels_label ON corral_task_labels (label, project, task_id);

CREATE TABLE corral_task_events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project text NOT NULL,
    task_id text NOT NULL,
    at timestamptz NOT NULL,
    kind text NOT NULL,
    actor text,
    token bigint,
    detail text,
    FOREIGN KEY (project, task_id) REFERENCES corral_tasks (project, id) ON DELETE CASCADE
);

CREATE INDEX corral_task_events_task ON corral_task_events (project, task_id, seq);
