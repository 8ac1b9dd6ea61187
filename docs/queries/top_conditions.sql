-- The ten most common conditions, counted once per patient.
SELECT code_display, code, count(DISTINCT patient_id) AS patients
FROM condition
GROUP BY code_display, code
ORDER BY patients DESC, code
LIMIT 10;
