//! Restore drills' parts below the use case (`ops::drill`): the scratch
//! folder and its clean-up (`scratch`), the checks run on a restored copy
//! (`checks`), the report with its repository record (`report`), and where
//! a random drill aims (`target`).

pub mod checks;
pub mod report;
pub mod scratch;
pub mod target;
