-- Active medication orders by drug, with the number of patients on each.
SELECT medication_display, count(*) AS orders, count(DISTINCT patient_id) AS patients
FROM medication_request
WHERE status = 'active'
GROUP BY medication_display
ORDER BY patients DESC, medication_display
LIMIT 20;
