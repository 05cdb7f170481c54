-- 0021: a placeholder on branch h/pgserver only (migration numbers must have no gaps; 0021
-- belongs to another change). Delete this file when merging: the real 0021 replaces it.
SELECT 1;
