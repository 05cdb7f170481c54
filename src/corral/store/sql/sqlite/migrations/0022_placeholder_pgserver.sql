-- 0022: a placeholder on branch h/pgserver only (migration numbers must have no gaps; 0022
-- belongs to another change). Delete this file when merging: the real 0022 replaces it.
SELECT 1;
