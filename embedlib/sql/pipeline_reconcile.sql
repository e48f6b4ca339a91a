-- A resumed run's own rows (`own`: its parts, payload columns left out) whose content another run committed
-- under the same version while this run was unfinished (`done`: the committed parts of the version): each
-- becomes a `duplicate` error row naming the committed path (`same_as`) and its run (`by_run`).
WITH committed AS (
    SELECT sha256, min(path) AS same_as, arg_min(run_id, path) AS by_run FROM done GROUP BY sha256
)
SELECT o.*, c.same_as, c.by_run
FROM own o JOIN committed c USING (sha256)
ORDER BY o.path, o.sha256;
