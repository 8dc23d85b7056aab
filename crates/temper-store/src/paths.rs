//! Parameter paths: the one walker over a burn module's parameters that knows each one's
//! dotted path.
//!
//! A path joins the field names from the root to the parameter (`model.layers.0.self_attn.
//! q_proj.weight`); `Vec` elements contribute their index. Enum variants contribute nothing,
//! as a wrapper class is not part of a Hugging Face or PEFT key: the `weight` of
//! `CausalLm::Llama(..).model.norm` is `model.norm.weight`. Loading, saving, LoRA and the
//! optimizer's state all name parameters this way, so a name means the same thing to each.
//!
//! Invariant: a module's parameter paths are unique (checked where a model is loaded, since
//! loading takes each checkpoint key once).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

/// Where a parameter sits: its dotted path and the type of the module that holds it.
#[derive(Debug, Clone, Copy)]
pub struct ParamPath<'a> {
    /// `model.layers.0.self_attn.q_proj.weight`.
    pub path: &'a str,
    /// The struct that owns the parameter as a field (`Linear`, `Embedding`, `RmsNorm`, ...).
    pub owner: &'a str,
    /// The structs from the root to the owner, outermost first.
    pub owners: &'a [String],
}

impl ParamPath<'_> {
    /// Whether a module of type `name` encloses the parameter (at any depth).
    pub fn within(&self, name: &str) -> bool {
        self.owners.iter().any(|owner| owner == name)
    }
}

/// Reads a module's float parameters with their paths.
pub trait PathVisitor<B: Backend> {
    fn visit_float<const D: usize>(&mut self, at: ParamPath<'_>, param: &Param<Tensor<B, D>>);
}

/// Rebuilds a module's float parameters, knowing their paths.
pub trait PathMapper<B: Backend> {
    fn map_float<const D: usize>(
        &mut self,
        at: ParamPath<'_>,
        param: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>>;
}

/// The dotted path of the parameter being visited and the structs around it.
#[derive(Debug, Default)]
struct Stack {
    names: Vec<String>,
    owners: Vec<String>,
    path: String,
}

impl Stack {
    fn enter(&mut self, name: &str, container_type: &str) {
        if container_type.starts_with("Enum:") {
            return;
        }
        if let Some(owner) = container_type.strip_prefix("Struct:") {
            self.owners.push(owner.to_owned());
        }
        self.names.push(name.to_owned());
    }

    fn exit(&mut self, container_type: &str) {
        if container_type.starts_with("Enum:") {
            return;
        }
        if container_type.starts_with("Struct:") {
            self.owners.pop();
        }
        self.names.pop();
    }

    /// The current position (the innermost name is the parameter's field).
    fn at(&mut self) -> ParamPath<'_> {
        self.path = self.names.join(".");
        ParamPath {
            path: &self.path,
            owner: self.owners.last().map(String::as_str).unwrap_or_default(),
            owners: &self.owners,
        }
    }
}

/// Calls `visitor` for every float parameter of `module`, in field order.
pub fn visit_params<B: Backend, M: Module<B>, V: PathVisitor<B>>(module: &M, visitor: &mut V) {
    struct Adapter<'a, V> {
        stack: Stack,
        visitor: &'a mut V,
    }
    impl<B: Backend, V: PathVisitor<B>> ModuleVisitor<B> for Adapter<'_, V> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.stack.exit(container_type);
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.visitor.visit_float(self.stack.at(), param);
        }
    }
    module.visit(&mut Adapter {
        stack: Stack::default(),
        visitor,
    });
}

/// Rebuilds every float parameter of `module` through `mapper`, in field order.
pub fn map_params<B: Backend, M: Module<B>, P: PathMapper<B>>(module: M, mapper: &mut P) -> M {
    struct Adapter<'a, P> {
        stack: Stack,
        mapper: &'a mut P,
    }
    impl<B: Backend, P: PathMapper<B>> ModuleMapper<B> for Adapter<'_, P> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, container_type: &str) {
            self.stack.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            self.mapper.map_float(self.stack.at(), param)
        }
    }
    module.map(&mut Adapter {
        stack: Stack::default(),
        mapper,
    })
}

/// The path of every float parameter by id, and the number of its elements (read without
/// initialising a lazy parameter).
pub fn param_paths<B: Backend, M: Module<B>>(module: &M) -> HashMap<ParamId, (String, usize)> {
    struct Paths(HashMap<ParamId, (String, usize)>);
    impl<B: Backend> PathVisitor<B> for Paths {
        fn visit_float<const D: usize>(&mut self, at: ParamPath<'_>, param: &Param<Tensor<B, D>>) {
            let elements = param.lazy_shape().num_elements();
            self.0.insert(param.id, (at.path.to_owned(), elements));
        }
    }
    let mut paths = Paths(HashMap::new());
    visit_params(module, &mut paths);
    paths.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[derive(Module, Debug)]
    struct Leaf<B: Backend> {
        weight: Param<Tensor<B, 2>>,
        bias: Option<Param<Tensor<B, 1>>>,
    }

    #[derive(Module, Debug)]
    struct Tree<B: Backend> {
        layers: Vec<Leaf<B>>,
        head: Option<Leaf<B>>,
    }

    #[derive(Module, Debug)]
    enum Wrapper<B: Backend> {
        Tree(Tree<B>),
    }

    fn leaf(bias: bool) -> Leaf<Flex> {
        let device = Default::default();
        Leaf {
            weight: Param::from_tensor(Tensor::zeros([2, 3], &device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([3], &device))),
        }
    }

    struct Collect(Vec<(String, String, bool)>);
    impl<B: Backend> PathVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, at: ParamPath<'_>, _: &Param<Tensor<B, D>>) {
            self.0
                .push((at.path.to_owned(), at.owner.to_owned(), at.within("Tree")));
        }
    }

    #[test]
    fn paths_skip_enum_variants_and_options_and_index_vectors() {
        let model = Wrapper::Tree(Tree {
            layers: vec![leaf(true), leaf(false)],
            head: Some(leaf(false)),
        });
        let mut collect = Collect(Vec::new());
        visit_params(&model, &mut collect);
        let expected = [
            ("layers.0.weight", "Leaf"),
            ("layers.0.bias", "Leaf"),
            ("layers.1.weight", "Leaf"),
            ("head.weight", "Leaf"),
        ]
        .map(|(path, owner)| (path.to_owned(), owner.to_owned(), true));
        assert_eq!(collect.0, expected);
    }

    #[test]
    fn mapping_sees_the_same_paths_as_visiting() {
        struct Rename(Vec<String>);
        impl<B: Backend> PathMapper<B> for Rename {
            fn map_float<const D: usize>(
                &mut self,
                at: ParamPath<'_>,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                self.0.push(at.path.to_owned());
                param
            }
        }
        let model = Wrapper::Tree(Tree {
            layers: vec![leaf(true)],
            head: None,
        });
        let ids = param_paths(&model);
        let mut rename = Rename(Vec::new());
        let _ = map_params(model, &mut rename);
        assert_eq!(rename.0, ["layers.0.weight", "layers.0.bias"]);
        let mut visited: Vec<(String, usize)> = ids.into_values().collect();
        visited.sort();
        assert_eq!(
            visited,
            [
                ("layers.0.bias".to_owned(), 3),
                ("layers.0.weight".to_owned(), 6)
            ]
        );
    }
}
