-- placeholder: keeps the migration numbers contiguous until the migrations before 0029 land.
SELECT 1;
