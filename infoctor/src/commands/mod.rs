//! One module per subcommand.

pub mod capture;
pub mod demo;
pub mod evaluate;
pub mod lakehouse;
pub mod load;
pub mod nlp;
pub mod serve;
pub mod sql;
pub mod tenant;
pub mod view;
