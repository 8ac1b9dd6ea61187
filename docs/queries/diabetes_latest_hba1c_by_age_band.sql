-- Patients with diabetes by age band: how many there are, how many have a
-- latest HbA1c above 9 %, and the mean of their latest HbA1c.
-- Diabetes: SNOMED CT 44054006 (diabetes mellitus type 2). HbA1c: LOINC 4548-4.
WITH diabetic AS (
    SELECT DISTINCT patient_id
    FROM condition
    WHERE code_system = 'http://snomed.info/sct' AND code = '44054006'
),
latest_hba1c AS (
    SELECT patient_id, value_quantity,
           row_number() OVER (PARTITION BY patient_id ORDER BY effective_start DESC) AS recency
    FROM observation
    WHERE code_system = 'http://loinc.org' AND code = '4548-4' AND value_quantity IS NOT NULL
)
SELECT
    CASE
        WHEN date_part('year', current_date) - date_part('year', p.birth_date_start) < 40 THEN 'under 40'
        WHEN date_part('year', current_date) - date_part('year', p.birth_date_start) < 65 THEN '40 to 64'
        ELSE '65 and over'
    END AS age_band,
    count(*) AS diabetic_patients,
    sum(CASE WHEN h.value_quantity > 9 THEN 1 ELSE 0 END) AS latest_hba1c_above_9,
    round(avg(h.value_quantity), 1) AS mean_latest_hba1c
FROM diabetic d
JOIN patient p ON p.id = d.patient_id
LEFT JOIN latest_hba1c h ON h.patient_id = d.patient_id AND h.recency = 1
GROUP BY 1
ORDER BY 1;
