//! Problems found in deploy files, each prefixed with the file (and item) it is in.

#[derive(Debug, Default)]
pub struct Findings {
    items: Vec<String>,
    context: String,
}

impl Findings {
    /// Where the next findings are (a file, `file: service x`, ...).
    pub fn at(&mut self, context: impl Into<String>) {
        self.context = context.into();
    }

    pub fn push(&mut self, message: impl Into<String>) {
        self.items
            .push(format!("{}: {}", self.context, message.into()));
    }

    pub fn items(&self) -> &[String] {
        &self.items
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
