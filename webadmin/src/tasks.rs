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
}

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
}

impl Task {
    pub fn id(&self) -> String {
        lock(&self.0).id.clone()
    }

    pub fn view(&self) -> TaskView {
        lock(&self.0).clone()
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
        for i in 0..2 * KEEP {
            tasks.start("clone", &format!("t{i}")).finish(&Ok::<(), crate::app::ApiError>(()));
        }
        let list = tasks.list();
        assert_eq!(list.len(), KEEP);
        assert!(list.iter().any(|t| t.id == running.id()), "a running task is never forgotten");
    }
}
