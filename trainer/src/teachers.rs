//! Distillation teachers and which training texts each one scores. Teachers trained with a
//! held-out fold (`--holdout-fold`), as many per fold of the same training file, score out of
//! fold: each text by the teachers that did not train on it, averaged (a teacher is surer of the
//! texts it trained on than of unseen ones, and a student learning from those scores learns that
//! overconfidence). Any other set of teachers scores every text and the student learns the mean.
use common::checkpoint::{self, Manifest};
use common::data::{Example, Fold};
use common::labels::LabelSet;
use common::model::PrecisionChoice;
use common::registry::ModelRef;
use tch::Device;
use tokio::runtime::Handle;

use crate::evaluate::{self, EvalError};

/// How a student's teachers score its training texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scoring {
    /// Every teacher scores every text; the student learns their mean.
    Mean,
    /// Teacher i held out fold `held_out[i]` of `count` and scores that fold's texts only;
    /// every fold is held out by `per_fold` teachers, whose scores are averaged.
    OutOfFold {
        count: u32,
        held_out: Vec<u32>,
        per_fold: usize,
    },
}

impl Scoring {
    pub fn name(&self) -> &'static str {
        match self {
            Scoring::Mean => "mean",
            Scoring::OutOfFold { .. } => "out-of-fold",
        }
    }

    /// How many of `teachers` score each text.
    pub fn teachers_per_text(&self, teachers: usize) -> usize {
        match self {
            Scoring::Mean => teachers,
            Scoring::OutOfFold { per_fold, .. } => *per_fold,
        }
    }

    /// For each teacher, the positions in `examples` of the texts it scores.
    pub fn routes(&self, teachers: usize, examples: &[Example]) -> Vec<Vec<usize>> {
        match self {
            Scoring::Mean => vec![(0..examples.len()).collect(); teachers],
            Scoring::OutOfFold {
                count, held_out, ..
            } => {
                let mut routes = vec![Vec::new(); held_out.len()];
                for (i, e) in examples.iter().enumerate() {
                    let fold = Fold::index_of(&e.id, *count);
                    for (route, _) in routes.iter_mut().zip(held_out).filter(|(_, &h)| h == fold) {
                        route.push(i);
                    }
                }
                routes
            }
        }
    }
}

/// What a teacher's manifest says about the data it trained on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherData {
    pub holdout_fold: Option<Fold>,
    /// sha256 of its training file, when recorded.
    pub train_sha256: Option<String>,
}

impl TeacherData {
    /// From a manifest; `train_file` names the training file (e.g. `train.tsv`).
    pub fn from_manifest(manifest: &Manifest, train_file: &str) -> Result<Self, String> {
        let recorded = &manifest.hyperparameters["train"]["holdout_fold"];
        let holdout_fold = if recorded.is_null() {
            None
        } else {
            let fold: Fold = serde_json::from_value(recorded.clone())
                .map_err(|e| format!("its manifest's train.holdout_fold {recorded}: {e}"))?;
            fold.check()?;
            Some(fold)
        };
        Ok(Self {
            holdout_fold,
            train_sha256: manifest.data_sha256.get(train_file).cloned(),
        })
    }
}

/// How `teachers` (in flag order) score a training file with sha256 `train_sha256`, or why they
/// cannot: out-of-fold teachers must hold out every fold of one count, each fold as often, all
/// trained on this very file (else "the fold it did not see" means nothing here).
pub fn plan(teachers: &[TeacherData], train_sha256: Option<&str>) -> Result<Scoring, String> {
    let folded: Vec<(usize, Fold)> = teachers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.holdout_fold.map(|f| (i, f)))
        .collect();
    let Some(&(first, fold)) = folded.first() else {
        return Ok(Scoring::Mean);
    };
    if let Some(plain) = teachers.iter().position(|t| t.holdout_fold.is_none()) {
        return Err(format!(
            "teachers[{first}] holds out fold {fold} and teachers[{plain}] no fold: out-of-fold \
             teachers must each hold out a fold (or none may)"
        ));
    }
    let count = fold.count;
    if let Some(&(i, other)) = folded.iter().find(|(_, f)| f.count != count) {
        return Err(format!(
            "teachers[{first}] holds out fold {fold} and teachers[{i}] fold {other}: out-of-fold \
             teachers must split the data into the same number of folds"
        ));
    }
    let held_out: Vec<u32> = folded.iter().map(|(_, f)| f.index).collect();
    let per_fold = |k: u32| held_out.iter().filter(|&&h| h == k).count();
    if let Some(missing) = (0..count).find(|&k| per_fold(k) == 0) {
        return Err(format!(
            "no teacher holds out fold {missing}/{count}: its texts would have no teacher that \
             did not train on them; give every fold a teacher"
        ));
    }
    let per_fold_0 = per_fold(0);
    if let Some(k) = (1..count).find(|&k| per_fold(k) != per_fold_0) {
        return Err(format!(
            "fold 0/{count} is held out by {per_fold_0} teachers and fold {k}/{count} by {}: every \
             fold must be held out by as many teachers (one per fold and seed)",
            per_fold(k)
        ));
    }
    let data = train_sha256.unwrap_or("unknown");
    for (i, t) in teachers.iter().enumerate() {
        if t.train_sha256.as_deref() != train_sha256 || train_sha256.is_none() {
            return Err(format!(
                "teachers[{i}] was trained on a training file with sha256 {}, this job's has {data}: \
                 out-of-fold teachers must be trained on the job's training file",
                t.train_sha256.as_deref().unwrap_or("unrecorded")
            ));
        }
    }
    Ok(Scoring::OutOfFold {
        count,
        held_out,
        per_fold: per_fold_0,
    })
}

/// Reads each teacher's manifest and plans how they score the training file `train_file` with
/// sha256 `train_sha256`.
pub async fn plan_for(
    uris: &[String],
    train_file: &str,
    train_sha256: Option<&str>,
) -> Result<Scoring, TeacherError> {
    let mut teachers = Vec::with_capacity(uris.len());
    for (i, uri) in uris.iter().enumerate() {
        let (store, _) = ModelRef::parse(uri)
            .map_err(EvalError::from)?
            .resolve()
            .await
            .map_err(EvalError::from)?;
        let manifest = checkpoint::read_manifest(&store)
            .await
            .map_err(EvalError::from)?;
        teachers.push(
            TeacherData::from_manifest(&manifest, train_file)
                .map_err(|e| TeacherError::Plan(format!("teachers[{i}] ({uri}): {e}")))?,
        );
    }
    plan(&teachers, train_sha256).map_err(TeacherError::Plan)
}

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("hyperparameters.teachers: {0}")]
    Plan(String),
}

/// The soft targets for `examples`, `[examples × labels]`, and the versions the teachers
/// resolved to: each teacher, loaded one at a time, scores the texts `scoring` routes to it,
/// and each text's target is the mean of its teachers' scores.
#[allow(clippy::too_many_arguments)]
pub fn soft_targets(
    handle: &Handle,
    uris: &[String],
    scoring: &Scoring,
    examples: &[Example],
    labels: &LabelSet,
    device: Device,
    precision: PrecisionChoice,
    batch_size: usize,
) -> Result<(Vec<f32>, Vec<String>), TeacherError> {
    let width = labels.len();
    let mut sums = vec![0f64; examples.len() * width];
    let mut versions = Vec::with_capacity(uris.len());
    for (uri, route) in uris.iter().zip(scoring.routes(uris.len(), examples)) {
        let texts: Vec<&str> = route.iter().map(|&i| examples[i].text.as_str()).collect();
        let scored = evaluate::score_checkpoint(
            handle,
            uri,
            &[texts],
            labels,
            device,
            precision,
            batch_size,
        )?;
        add_rows(&mut sums, &route, &scored.scores[0], width);
        versions.push(scored.version);
    }
    let n = scoring.teachers_per_text(uris.len()).max(1) as f64;
    Ok((sums.iter().map(|s| (s / n) as f32).collect(), versions))
}

/// Adds row r of `scores` (`width` wide) to row `route[r]` of `sums`.
fn add_rows(sums: &mut [f64], route: &[usize], scores: &[f32], width: usize) {
    for (row, &i) in scores.chunks_exact(width).zip(route) {
        for (sum, &v) in sums[i * width..(i + 1) * width].iter_mut().zip(row) {
            *sum += f64::from(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher(fold: Option<&str>, sha: &str) -> TeacherData {
        TeacherData {
            holdout_fold: fold.map(|f| f.parse().unwrap()),
            train_sha256: Some(sha.into()),
        }
    }

    #[test]
    fn teachers_without_folds_are_averaged() {
        let plain = [teacher(None, "a"), teacher(None, "b")];
        assert_eq!(plan(&plain, Some("c")), Ok(Scoring::Mean));
    }

    #[test]
    fn one_teacher_per_fold_of_the_same_file_scores_out_of_fold() {
        let folded = [
            teacher(Some("2/3"), "a"),
            teacher(Some("0/3"), "a"),
            teacher(Some("1/3"), "a"),
        ];
        assert_eq!(
            plan(&folded, Some("a")),
            Ok(Scoring::OutOfFold {
                count: 3,
                held_out: vec![2, 0, 1],
                per_fold: 1
            })
        );
        let two_seeds = [
            teacher(Some("0/2"), "a"),
            teacher(Some("1/2"), "a"),
            teacher(Some("1/2"), "a"),
            teacher(Some("0/2"), "a"),
        ];
        assert_eq!(
            plan(&two_seeds, Some("a")),
            Ok(Scoring::OutOfFold {
                count: 2,
                held_out: vec![0, 1, 1, 0],
                per_fold: 2
            })
        );
    }

    #[test]
    fn every_broken_fold_set_is_refused_with_its_reason() {
        let cases: Vec<(Vec<TeacherData>, &str)> = vec![
            (
                vec![teacher(Some("0/2"), "a"), teacher(None, "a")],
                "teachers[1] no fold",
            ),
            (
                vec![teacher(Some("0/2"), "a"), teacher(Some("1/3"), "a")],
                "same number of folds",
            ),
            (
                vec![teacher(Some("0/2"), "a"), teacher(Some("0/2"), "a")],
                "no teacher holds out fold 1/2",
            ),
            (
                vec![
                    teacher(Some("0/2"), "a"),
                    teacher(Some("1/2"), "a"),
                    teacher(Some("1/2"), "a"),
                ],
                "fold 0/2 is held out by 1 teachers and fold 1/2 by 2",
            ),
            (
                vec![teacher(Some("0/3"), "a"), teacher(Some("2/3"), "a")],
                "no teacher holds out fold 1/3",
            ),
            (
                vec![teacher(Some("0/2"), "a"), teacher(Some("1/2"), "b")],
                "teachers[1] was trained on a training file with sha256 b",
            ),
        ];
        for (teachers, reason) in cases {
            let err = plan(&teachers, Some("a")).unwrap_err();
            assert!(err.contains(reason), "{err:?} lacks {reason:?}");
        }
        let unrecorded = [teacher(Some("0/2"), "a"), teacher(Some("1/2"), "a")];
        assert!(plan(&unrecorded, None).is_err());
    }

    #[test]
    fn out_of_fold_routes_each_text_to_the_teachers_that_held_it_out() {
        let examples: Vec<Example> = (0..200)
            .map(|i| Example {
                text: format!("text {i}"),
                labels: vec![],
                id: format!("id{i}"),
            })
            .collect();
        // Two seeds of three folds: teachers 0 and 3 held out fold 2, and so on.
        let held = [2, 0, 1, 2, 0, 1];
        let scoring = Scoring::OutOfFold {
            count: 3,
            held_out: held.to_vec(),
            per_fold: 2,
        };
        let routes = scoring.routes(held.len(), &examples);
        let mut seen = vec![0; examples.len()];
        for (t, route) in routes.iter().enumerate() {
            for &i in route {
                assert_eq!(Fold::index_of(&examples[i].id, 3), held[t]);
                seen[i] += 1;
            }
        }
        assert!(
            seen.iter().all(|&n| n == 2),
            "each text scored by its two teachers"
        );

        let width = 2;
        let mut sums = vec![0f64; examples.len() * width];
        for (t, route) in routes.iter().enumerate() {
            let scores: Vec<f32> = route.iter().flat_map(|_| [t as f32, 0.5]).collect();
            add_rows(&mut sums, route, &scores, width);
        }
        for (i, e) in examples.iter().enumerate() {
            let fold = Fold::index_of(&e.id, 3) as usize;
            let teachers = (0..held.len()).filter(|&t| held[t] as usize == fold);
            let expected: f64 = teachers.map(|t| t as f64).sum();
            assert_eq!(&sums[i * width..(i + 1) * width], &[expected, 1.0]);
        }
    }
}
