//! One module per subcommand.

pub mod demo;
pub mod load;
pub mod serve;
pub mod tenant;
