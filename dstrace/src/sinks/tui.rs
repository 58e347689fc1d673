//! The full-screen view of `dstrace run` on a terminal: the board
//! ([`crate::model::board`]) as a tree, mount -> lock -> blocking function, with the
//! tasks, the chain of each group on one line, and the advice; keys to move, sort,
//! expand a group to its tasks and stacks, filter, and quit.
//!
//! The terminal is the one thing a crash must not leave broken: raw mode and the
//! alternate screen are undone by [`Tui`]'s `Drop` and by a panic hook, whatever
//! ends the run (`q`, Ctrl-C, SIGTERM, `--duration`, an error).

use std::{
    collections::HashSet,
    io::{self, Stdout},
    sync::Once,
};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::Paragraph,
    Terminal,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::{
    clock::human_duration,
    escape::{controls, escape},
    model::board::{BoardGroup, GroupKey, SortBy},
    sinks::tree::{self, chain_text},
};

/// Kernel frames shown per stack of an expanded group.
const STACK_FRAMES: usize = 12;
/// Tasks listed per expanded group.
const EXPANDED_TASKS: usize = 50;

/// What one screen shows beside the groups.
pub struct Screen<'a> {
    /// The groups, in board order.
    pub groups: &'a [BoardGroup],
    /// The first line: time, tasks in D, tracing state, drops.
    pub status: &'a str,
    /// Advice lines.
    pub advice: &'a [String],
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// End the run.
    Quit,
    /// Draw again (the selection, filter or expansion changed).
    Redraw,
    /// Build the groups again (the order changed), then draw.
    Regroup,
    /// Nothing.
    Nothing,
}

/// The full-screen view; dropping it restores the terminal.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    /// Index of the selected group among those shown.
    selected: usize,
    expanded: HashSet<GroupKey>,
    sort: SortBy,
    filter: String,
    editing_filter: bool,
    /// The keys of the groups last drawn, in order (what the selection indexes).
    shown: Vec<GroupKey>,
}

impl Tui {
    /// Takes over the terminal: raw mode, alternate screen, no cursor.
    pub fn start() -> io::Result<Tui> {
        install_panic_hook();
        terminal::enable_raw_mode()?;
        let mut stdout = io::stdout();
        if let Err(err) = execute!(stdout, EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(err);
        }
        let terminal = match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => terminal,
            Err(err) => {
                restore();
                return Err(err);
            }
        };
        Ok(Tui {
            terminal,
            selected: 0,
            expanded: HashSet::new(),
            sort: SortBy::default(),
            filter: String::new(),
            editing_filter: false,
            shown: Vec::new(),
        })
    }

    /// The order asked for.
    pub fn sort(&self) -> SortBy {
        self.sort
    }

    /// Draws a screen.
    pub fn draw(&mut self, screen: &Screen<'_>) -> io::Result<()> {
        let filter = self.filter.to_lowercase();
        let groups: Vec<BoardGroup> =
            screen.groups.iter().filter(|group| matches(group, &filter)).cloned().collect();
        // Keep the selection on the same group when the order changes.
        let previous = self.shown.get(self.selected).cloned();
        self.shown = groups.iter().map(|group| group.key.clone()).collect();
        if let Some(previous) = previous {
            if let Some(index) = self.shown.iter().position(|key| *key == previous) {
                self.selected = index;
            }
        }
        self.selected = self.selected.min(self.shown.len().saturating_sub(1));

        let (lines, selected_line) = self.body(&groups);
        let footer = self.footer();
        let advice: Vec<Line<'_>> = screen
            .advice
            .iter()
            .take(4)
            .map(|line| Line::from(format!("* {}", controls(line))).yellow())
            .collect();
        let status = Line::from(escape(screen.status)).bold().reversed();
        self.terminal.draw(|frame| {
            let [top, body, advice_area, bottom] = Layout::vertical([
                Constraint::Length(1),
                Constraint::Min(3),
                Constraint::Length(advice.len() as u16),
                Constraint::Length(1),
            ])
            .areas(frame.area());
            frame.render_widget(Paragraph::new(status), top);
            // Scroll so that the selected group stays in view.
            let height = body.height as usize;
            let offset = selected_line.map_or(0, |line| (line + 3).saturating_sub(height));
            frame.render_widget(Paragraph::new(lines).scroll((offset as u16, 0)), body);
            frame.render_widget(Paragraph::new(advice), advice_area);
            frame.render_widget(Paragraph::new(footer), bottom);
        })?;
        Ok(())
    }

    /// The lines of the groups, and the index of the selected group's line.
    fn body(&self, groups: &[BoardGroup]) -> (Vec<Line<'static>>, Option<usize>) {
        let mut lines = vec![Line::from(format!(
            "{:>5}  {:>9}  {:>9}  {:>6}  MOUNT / LOCK / BLOCKED IN",
            "IN D", "OLDEST", "BLOCKED", "DONE"
        ))
        .bold()];
        if groups.is_empty() {
            let text = if self.filter.is_empty() {
                "No task in D, and no D wait of at least --min-duration yet."
            } else {
                "No group matches the filter (Esc clears it)."
            };
            lines.push(Line::from(text).italic());
            return (lines, None);
        }
        let mut selected_line = None;
        for row in tree::rows(groups) {
            let indent = "  ".repeat(row.depth);
            let oldest =
                if row.in_d > 0 { format!("{}+", human_duration(row.oldest_ns)) } else { "-".into() };
            let numbers = format!(
                "{:>5}  {:>9}  {:>9}  {:>6}  ",
                row.in_d,
                oldest,
                human_duration(row.blocked_ns),
                row.done
            );
            let label = format!("{indent}{}", escape(&row.label));
            let detail = format!("  {}", escape(&row.detail));
            let line = match row.group {
                None if row.depth == 0 => {
                    Line::from(vec![Span::raw(numbers), label.bold().cyan(), detail.into()])
                }
                None => Line::from(vec![Span::raw(numbers), label.yellow(), detail.into()]),
                Some(index) => {
                    let selected = index == self.selected;
                    let marker = if self.expanded.contains(&groups[index].key) { "-" } else { "+" };
                    let style = if selected {
                        Style::default().add_modifier(Modifier::REVERSED)
                    } else {
                        Style::default()
                    };
                    if selected {
                        selected_line = Some(lines.len());
                    }
                    Line::from(vec![
                        Span::raw(numbers),
                        Span::styled(format!("{label} {marker}"), style.add_modifier(Modifier::BOLD)),
                        Span::styled(detail, style),
                    ])
                }
            };
            lines.push(line);
            let Some(index) = row.group else { continue };
            let group = &groups[index];
            let pad = " ".repeat(38 + indent.len() + 2);
            if let Some(links) = group.chain() {
                lines.push(Line::from(format!("{pad}chain: {}", escape(&chain_text(links)))).dim());
            }
            if self.expanded.contains(&group.key) {
                lines.extend(expanded(group, &pad));
            }
        }
        (lines, selected_line)
    }

    fn footer(&self) -> Line<'static> {
        if self.editing_filter {
            return Line::from(format!("filter: {}_   (Enter: keep, Esc: clear)", escape(&self.filter)))
                .reversed();
        }
        let mut text = format!(
            "q quit  \u{2191}\u{2193} move  Enter expand  s sort ({})  / filter  e expand all",
            self.sort.name()
        );
        if !self.filter.is_empty() {
            text.push_str(&format!("  [filter: {}, Esc clears]", escape(&self.filter)));
        }
        Line::from(text).reversed()
    }

    /// Handles a key.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'd')) {
            return Action::Quit;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() => self.filter.push(c),
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        match key.code {
            KeyCode::Null => Action::Redraw,
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                Action::Redraw
            }
            KeyCode::Esc => Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.shown.len().saturating_sub(1));
                Action::Redraw
            }
            KeyCode::Home | KeyCode::Char('g') => {
                self.selected = 0;
                Action::Redraw
            }
            KeyCode::End | KeyCode::Char('G') => {
                self.selected = self.shown.len().saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Enter | KeyCode::Char(' ') => {
                if let Some(key) = self.shown.get(self.selected) {
                    if !self.expanded.remove(key) {
                        self.expanded.insert(key.clone());
                    }
                }
                Action::Redraw
            }
            KeyCode::Char('e') => {
                if self.expanded.len() >= self.shown.len() {
                    self.expanded.clear();
                } else {
                    self.expanded.extend(self.shown.iter().cloned());
                }
                Action::Redraw
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Regroup
            }
            KeyCode::Char('/') => {
                self.editing_filter = true;
                Action::Redraw
            }
            _ => Action::Nothing,
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}

/// Whether a group matches a (lower-case) filter: in its mount, lock, function or
/// the command names of its tasks.
fn matches(group: &BoardGroup, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let hit = |text: &str| text.to_lowercase().contains(filter);
    group.key.mount.as_deref().is_some_and(hit)
        || group.key.lock.as_deref().is_some_and(hit)
        || hit(&group.key.function)
        || group.tasks.iter().any(|wait| hit(&wait.comm))
}

/// The lines of an expanded group: its tasks, then its distinct stacks.
fn expanded(group: &BoardGroup, pad: &str) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for wait in group.tasks.iter().take(EXPANDED_TASKS) {
        let file = wait.on.file.as_ref().and_then(|file| file.path.clone()).unwrap_or_default();
        lines.push(Line::from(format!(
            "{pad}{}/{} {} {} {}+ {} {}",
            wait.pid,
            wait.tid,
            escape(&wait.comm),
            wait.state.name(),
            human_duration(wait.duration_ns),
            wait.on.syscall.unwrap_or(""),
            escape(&file),
        )));
    }
    if group.tasks.len() > EXPANDED_TASKS {
        lines.push(Line::from(format!("{pad}... {} more tasks", group.tasks.len() - EXPANDED_TASKS)));
    }
    let mut stacks: Vec<(&[String], usize)> = Vec::new();
    for wait in &group.tasks {
        match stacks.iter_mut().find(|(stack, _)| *stack == &wait.stack[..]) {
            Some((_, n)) => *n += 1,
            None => stacks.push((&wait.stack, 1)),
        }
    }
    for (stack, n) in stacks {
        lines.push(Line::from(format!("{pad}stack of {n} task(s):")).dim());
        for frame in stack.iter().take(STACK_FRAMES) {
            lines.push(Line::from(format!("{pad}  {}", escape(frame))).dim());
        }
    }
    lines
}

/// Leaves raw mode and the alternate screen, shows the cursor. Safe to call more
/// than once.
pub fn restore() {
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
}

/// Restores the terminal before a panic message is printed.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Key presses, read by a thread of their own (reading the terminal blocks).
pub fn keys() -> UnboundedReceiver<KeyEvent> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || loop {
        match event::read() {
            Ok(Event::Key(key)) => {
                if sender.send(key).is_err() {
                    return;
                }
            }
            Ok(_) => {
                // A resize: an empty key asks for a redraw.
                if sender.send(KeyEvent::new(KeyCode::Null, KeyModifiers::NONE)).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    });
    receiver
}

/// Whether the full-screen view can run: standard input and output are terminals.
pub fn available() -> bool {
    use std::io::IsTerminal as _;
    io::stdin().is_terminal() && io::stdout().is_terminal()
}
