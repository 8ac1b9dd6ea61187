//! Embedding throughput in sentences and notes per second.
//!
//! Two workloads: the 50 reference sentences repeated 8 times, and the
//! sentences (by the crate's splitter, three words or more) of whole
//! ctakes-examples notes from `INFOCTOR_TEST_DATA`, taken in file order until
//! they hold at least 1,000 sentences. The note workload also reports notes
//! per second: the notes it covers divided by the time to embed all their
//! sentences. Its sentences are written, one JSON array per note, to
//! `infoctor-nlp-bench-notes.jsonl` in the temporary folder, so that
//! `reference/bench_sentence_transformers.py` times sentence-transformers on
//! the same input (`scripts/bench-nlp` runs both). Candle uses every core the
//! process may run on; set `RAYON_NUM_THREADS` to limit it.
//!
//! Each workload runs three times per batch size. The output gives the best
//! wall-clock rate and, for that run, the rate per CPU-second of the process
//! (user plus system time from `/proc/self/stat`), which other load on the
//! machine disturbs less than wall-clock time.
//!
//! Run with `cargo bench -p infoctor-nlp --bench embed`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use infoctor_nlp::Embedder;
use infoctor_nlp::model_files::{MINILM_DIR_NAME, fetch_minilm};
use infoctor_nlp::sections::detect_sections;
use infoctor_nlp::sentences::split_sentences;
use infoctor_nlp::terminology::open_text;

const REPEATS: usize = 8;
/// The note workload takes whole notes until it has this many sentences.
const NOTE_SENTENCES: usize = 1_000;
/// Name of the file, in the temporary folder, that contains the note workload.
const NOTES_FILE: &str = "infoctor-nlp-bench-notes.jsonl";
const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let cache = std::env::var_os("INFOCTOR_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.model-cache")));
    let model_dir = cache.join(MINILM_DIR_NAME);
    fetch_minilm(&model_dir)?;

    let started = Instant::now();
    let embedder = Embedder::load(&model_dir)?;
    println!("model load with full hash check: {:.2?}", started.elapsed());

    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/reference/sentences.txt"
    ))?;
    let reference: Vec<&str> = reference.lines().collect();
    let repeated: Vec<&str> = reference
        .iter()
        .copied()
        .cycle()
        .take(reference.len() * REPEATS)
        .collect();

    let notes = note_sentences()?;
    let output = std::env::temp_dir().join(NOTES_FILE);
    let mut file = std::fs::File::create(&output)?;
    for note in &notes {
        // One sentence per string, so line breaks inside a sentence become spaces.
        let sentences: Vec<String> = note
            .iter()
            .map(|sentence| sentence.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        writeln!(file, "{}", serde_json::to_string(&sentences)?)?;
    }
    println!("note sentences written to {}", output.display());
    let note_count = notes.len();
    let notes: Vec<&str> = notes.iter().flatten().map(String::as_str).collect();

    // Warm-up: first calls allocate buffers and spin up the thread pool.
    embedder.embed(&reference[..8])?;

    for batch_size in [32, 64] {
        let embedder = Embedder::load(&model_dir)?.with_batch_size(batch_size);
        embedder.embed(&reference[..8])?;
        time(
            "reference sentences x8",
            batch_size,
            &embedder,
            &repeated,
            None,
        )?;
        time(
            "ctakes notes",
            batch_size,
            &embedder,
            &notes,
            Some(note_count),
        )?;
    }
    Ok(())
}

/// Embeds `sentences` three times and prints the best rate; `notes` is the
/// number of whole notes the sentences come from, if they do.
fn time(
    label: &str,
    batch_size: usize,
    embedder: &Embedder,
    sentences: &[&str],
    notes: Option<usize>,
) -> anyhow::Result<()> {
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..RUNS {
        let cpu_before = process_cpu_seconds()?;
        let started = Instant::now();
        let vectors = embedder.embed(sentences)?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = process_cpu_seconds()? - cpu_before;
        assert_eq!(vectors.len(), sentences.len());
        if best.is_none_or(|(best_seconds, _)| seconds < best_seconds) {
            best = Some((seconds, cpu_seconds));
        }
    }
    let (seconds, cpu_seconds) = best.expect("at least one run");
    let count = sentences.len() as f64;
    let notes_rate = notes
        .map(|notes| format!(", {notes} notes = {:.2} notes/s", notes as f64 / seconds))
        .unwrap_or_default();
    println!(
        "{label:<24} batch {batch_size:>3}: {:>5} sentences, best of {RUNS}: {seconds:>6.2} s = {:>6.1} sentences/s{notes_rate}; {cpu_seconds:>6.2} CPU-s = {:>6.1} sentences per CPU-second",
        sentences.len(),
        count / seconds,
        count / cpu_seconds
    );
    Ok(())
}

/// Returns the user plus system CPU time of this process, in seconds.
fn process_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, in clock ticks of 1/100 s.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/stat format"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields[11].parse()?;
    let system: f64 = fields[12].parse()?;
    Ok((user + system) / 100.0)
}

/// Collects the sentences of at least three words of the first
/// ctakes-examples notes, note by note, until there are at least
/// [`NOTE_SENTENCES`]. Notes without such a sentence are skipped.
fn note_sentences() -> anyhow::Result<Vec<Vec<String>>> {
    let data = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    let path = data.join("clinical-notes-ctakes-examples/notes.jsonl.gz");
    let mut notes = Vec::new();
    let mut total = 0;
    for line in open_text(&path)?.lines() {
        let note: serde_json::Value = serde_json::from_str(&line?)?;
        let text = note["text"].as_str().unwrap_or_default();
        let mut sentences = Vec::new();
        for section in detect_sections(text) {
            for range in split_sentences(text, section.body_start..section.body_end) {
                let sentence = &text[range];
                if sentence.split_whitespace().count() >= 3 {
                    sentences.push(sentence.to_string());
                }
            }
        }
        if sentences.is_empty() {
            continue;
        }
        total += sentences.len();
        notes.push(sentences);
        if total >= NOTE_SENTENCES {
            break;
        }
    }
    anyhow::ensure!(
        total >= NOTE_SENTENCES,
        "{} holds only {total} sentences of three words or more",
        path.display()
    );
    Ok(notes)
}
