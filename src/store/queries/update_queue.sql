-- UpdateQueue: a queue's pause and running limit ($3, $4: NULL leaves it unchanged).
INSERT INTO job_queue (org_id, type, paused, max_running)
VALUES ($1, $2, coalesce($3, false), coalesce($4, 0))
ON CONFLICT (org_id, type) DO UPDATE
SET paused = coalesce($3, job_queue.paused),
    max_running = coalesce($4, job_queue.max_running),
    updated_at = now()
RETURNING paused, max_running
