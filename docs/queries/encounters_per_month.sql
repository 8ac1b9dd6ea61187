-- Encounters per month and class (ambulatory, emergency, inpatient, ...)
-- over the last five years of data.
SELECT date_trunc('month', period_start) AS month, class_code, count(*) AS encounters
FROM encounter
WHERE period_start >= (SELECT max(period_start) FROM encounter) - INTERVAL '5 years'
GROUP BY 1, 2
ORDER BY 1, 2;
