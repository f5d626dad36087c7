//! Long tasks (a qcow2 conversion, a disk clone), as Proxmox's task log
//! shows them: each has an ID, what it works on, its progress in bytes,
//! its log and its result, and stays listed after it ends (the last
//! [`KEEP`]). `GET /api/v1/tasks` lists them; the Images page shows them.
//! Tasks live in the panel's memory: a task cut short by a restart left
//! only a hidden temporary file, which the image store removes at start.

use crate::store::now_unix;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Finished tasks kept for the list.
const KEEP: usize = 50;
/// Log lines kept per task.
const LOG_LINES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Done,
    Failed,
}

/// A task as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub id: String,
    /// What it does: `convert`, `clone`.
    pub kind: String,
    /// What it works on, e.g. the image it makes.
    pub target: String,
    pub state: TaskState,
    /// Bytes done of `total_bytes` (0 when not known yet).
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Unix seconds.
    pub started: u64,
    pub ended: Option<u64>,
    pub log: Vec<String>,
    /// The error, for a failed task.
    pub error: Option<String>,
    /// Whether the admin can stop it while it runs (downloads, clones).
    pub stoppable: bool,
    /// The admin asked it to stop; it ends failed, leaving nothing behind.
    pub stopping: bool,
}

/// Task kinds the admin can stop: they check between blocks.
const STOPPABLE: [&str; 2] = ["download", "clone"];

/// The panel's tasks, newest first.
#[derive(Default)]
pub struct Tasks {
    list: Mutex<VecDeque<Arc<Mutex<TaskView>>>>,
}

/// A running task's handle: progress, log, and its end.
#[derive(Clone)]
pub struct Task(Arc<Mutex<TaskView>>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tasks {
    /// Starts a task.
    pub fn start(&self, kind: &str, target: &str) -> Task {
        let view = TaskView {
            id: format!("{}-{}", now_unix(), crate::auth::random_hex(3)),
            kind: kind.into(),
            target: target.into(),
            state: TaskState::Running,
            done_bytes: 0,
            total_bytes: 0,
            started: now_unix(),
            ended: None,
            log: Vec::new(),
            error: None,
            stoppable: STOPPABLE.contains(&kind),
            stopping: false,
        };
        tracing::info!(task = %view.id, "{kind} {target}: started");
        let task = Arc::new(Mutex::new(view));
        let mut list = lock(&self.list);
        list.push_front(Arc::clone(&task));
        // Forget the oldest finished tasks; running ones always stay.
        while list.len() > KEEP {
            match list.iter().rposition(|t| lock(t).state != TaskState::Running) {
                Some(i) => drop(list.remove(i)),
                None => break,
            }
        }
        Task(task)
    }

    pub fn list(&self) -> Vec<TaskView> {
        lock(&self.list).iter().map(|t| lock(t).clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<TaskView> {
        lock(&self.list).iter().map(|t| lock(t).clone()).find(|t| t.id == id)
    }

    /// Asks task `id` to stop; it ends at its next block.
    pub fn stop(&self, id: &str) -> Result<TaskView, crate::app::ApiError> {
        use crate::app::ApiError;
        let list = lock(&self.list);
        let task = list.iter().find(|t| lock(t).id == id).ok_or_else(|| ApiError::not_found("task"))?;
        let mut t = lock(task);
        if t.state != TaskState::Running {
            return Err(ApiError::conflict(format!("task {id} has ended already")));
        }
        if !t.stoppable {
            return Err(ApiError::conflict(format!("a {} cannot be stopped; it ends by itself", t.kind)));
        }
        t.stopping = true;
        t.log.push("stopping, as the admin asked".into());
        Ok(t.clone())
    }
}

/// The error a task stopped by the admin ends with.
pub fn stopped() -> crate::app::ApiError {
    crate::app::ApiError::conflict("stopped by the admin; nothing was kept")
}

impl Task {
    pub fn id(&self) -> String {
        lock(&self.0).id.clone()
    }

    pub fn view(&self) -> TaskView {
        lock(&self.0).clone()
    }

    /// Whether the admin asked it to stop.
    pub fn stopping(&self) -> bool {
        lock(&self.0).stopping
    }

    pub fn progress(&self, done: u64, total: u64) {
        let mut t = lock(&self.0);
        (t.done_bytes, t.total_bytes) = (done, total);
    }

    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        let mut t = lock(&self.0);
        tracing::info!(task = %t.id, "{line}");
        if t.log.len() < LOG_LINES {
            t.log.push(line);
        }
    }

    /// Ends the task with `result`; an error is its message for the admin.
    pub fn finish<T>(&self, result: &Result<T, crate::app::ApiError>) {
        let mut t = lock(&self.0);
        t.ended = Some(now_unix());
        match result {
            Ok(_) => {
                t.state = TaskState::Done;
                t.done_bytes = t.total_bytes;
            }
            Err(e) => {
                t.state = TaskState::Failed;
                t.error = Some(e.message.clone());
                tracing::warn!(task = %t.id, "{} {} failed: {}", t.kind, t.target, e.message);
            }
        }
    }
}

/// A download reports to its task.
impl crate::download::Progress for Task {
    fn progress(&mut self, done: u64, total: Option<u64>) {
        Task::progress(self, done, total.unwrap_or(0));
    }
    fn log(&mut self, line: String) {
        Task::log(self, line);
    }
    fn stopping(&self) -> bool {
        Task::stopping(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_report_progress_and_results_and_old_ones_are_forgotten() {
        let tasks = Tasks::default();
        let t = tasks.start("clone", "web2-disk");
        t.progress(10, 40);
        t.log("copying");
        let v = tasks.get(&t.id()).unwrap();
        assert_eq!((v.state, v.done_bytes, v.total_bytes, v.log.len()), (TaskState::Running, 10, 40, 1));
        t.finish(&Ok::<(), crate::app::ApiError>(()));
        let v = tasks.get(&t.id()).unwrap();
        assert_eq!((v.state, v.done_bytes), (TaskState::Done, 40));
        assert!(v.ended.is_some());
        let bad = tasks.start("convert", "x");
        bad.finish(&Err::<(), _>(crate::app::ApiError::bad("file", "file: broken")));
        assert_eq!(tasks.list()[0].error.as_deref(), Some("file: broken"), "newest first");
        let running = tasks.start("clone", "long");
        assert!(!running.stopping());
        assert!(tasks.stop(&running.id()).unwrap().stopping && running.stopping());
        assert_eq!(tasks.stop(&t.id()).unwrap_err().status, 409, "an ended task is not stopped");
        let convert = tasks.start("convert", "c");
        assert!(tasks.stop(&convert.id()).unwrap_err().message.contains("cannot be stopped"));
        convert.finish(&Ok::<(), crate::app::ApiError>(()));
        assert_eq!(tasks.stop("nope").unwrap_err().status, 404);
        for i in 0..2 * KEEP {
            tasks.start("clone", &format!("t{i}")).finish(&Ok::<(), crate::app::ApiError>(()));
        }
        let list = tasks.list();
        assert_eq!(list.len(), KEEP);
        assert!(list.iter().any(|t| t.id == running.id()), "a running task is never forgotten");
    }
}
